//! `automation-gateway jobs ...`: a client of the public API for people and pipelines. It
//! submits, waits (long-poll), lists, cancels and follows jobs (the event stream), with human
//! output by default and `--output json` for scripts, and exit codes a pipeline can branch on.

mod output;
mod params;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use params::parse_params;

/// Exit codes of the `jobs` commands.
pub mod exit {
    /// The job ended SUCCESS, or the command did what it was asked.
    pub const OK: u8 = 0;
    /// The job ended FAILED.
    pub const FAILED: u8 = 1;
    /// The job ended CANCELED.
    pub const CANCELED: u8 = 2;
    /// The wait ran out before the job ended.
    pub const TIMEOUT: u8 = 3;
    /// The command line is wrong.
    pub const USAGE: u8 = 4;
    /// The gateway could not be reached, refused the token, or answered with an error.
    pub const HTTP: u8 = 5;
}

/// Where the gateway is and how to talk to it.
#[derive(Debug, Clone, clap::Args, PartialEq, Eq)]
pub struct ClientArgs {
    /// The gateway's base URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8000", global = true)]
    pub url: String,
    /// A file holding the API token (the token itself may come from `GATEWAY_TOKEN` instead,
    /// which keeps it out of the process list).
    #[arg(long, env = "GATEWAY_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// `human` (a live status line, readable summaries) or `json` (machine-readable).
    #[arg(long, value_enum, default_value_t = Output::Human, global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Human,
    Json,
}

/// The `jobs` subcommands.
#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum JobsCommand {
    /// Trigger ACTION on TARGET; prints the job id (or, with --wait, waits for its end).
    Submit {
        action: String,
        target: String,
        /// A parameter, `key=value`; the value is JSON when it parses as JSON (`true`, `100`,
        /// `{"a":1}`), a string otherwise; dotted keys nest (`simulate.duration_ms=100`).
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Who asks (`requested_by`); defaults to `$USER`, or `cli`.
        #[arg(long)]
        requested_by: Option<String>,
        /// Makes a retried submit return the original job instead of creating a second.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// POST the job here when it ends (the gateway must allow the host).
        #[arg(long)]
        callback_url: Option<String>,
        /// Wait for the job to end; the exit code is its status.
        #[arg(long)]
        wait: bool,
        /// Longest wait (`90s`, `5m`, `1h`, `500ms`); exit code 3 when it runs out.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Show a job.
    Get { id: String },
    /// Wait for a job to end; the exit code is its status.
    Wait {
        id: String,
        /// Longest wait (`90s`, `5m`, `1h`, `500ms`); exit code 3 when it runs out.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// List jobs, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        requested_by: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a job.
    Cancel { id: String },
    /// Print a job's events; with --follow, keep printing them live until the job ends.
    Logs {
        id: String,
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// `90s`, `5m`, `1h`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a duration (90s, 5m, 1h, 500ms)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("'{s}' is not a duration (90s, 5m, 1h, 500ms)"))
}

/// A failure of the command itself (not of a job).
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self { code: exit::USAGE, message: message.into() }
    }

    fn http(message: impl Into<String>) -> Self {
        Self { code: exit::HTTP, message: message.into() }
    }
}

/// Runs one `jobs` command and returns its exit code.
pub async fn run(args: ClientArgs, command: JobsCommand) -> ExitCode {
    crate::install_tls_provider();
    match Client::new(&args).map(|c| (c, args.output)) {
        Ok((client, out)) => match execute(&client, out, command).await {
            Ok(code) => ExitCode::from(code),
            Err(f) => {
                eprintln!("automation-gateway: {}", f.message);
                ExitCode::from(f.code)
            }
        },
        Err(f) => {
            eprintln!("automation-gateway: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn execute(client: &Client, out: Output, command: JobsCommand) -> Result<u8, Failure> {
    match command {
        JobsCommand::Submit { action, target, params, requested_by, idempotency_key, callback_url, wait, timeout } => {
            let parameters = parse_params(&params).map_err(Failure::usage)?;
            let requested_by = requested_by
                .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                .unwrap_or_else(|| "cli".into());
            let mut body = serde_json::json!({
                "action": action, "target": target, "requested_by": requested_by, "parameters": parameters,
            });
            if let Some(url) = callback_url {
                body["callback_url"] = Value::String(url);
            }
            let accepted = client.submit(&body, idempotency_key.as_deref()).await?;
            let id = accepted["job_id"].as_str().unwrap_or_default().to_owned();
            if !wait {
                match out {
                    Output::Json => output::json(&accepted),
                    Output::Human => println!("{id}"),
                }
                return Ok(exit::OK);
            }
            if out == Output::Human {
                eprintln!("submitted {id}");
            }
            wait_for(client, out, &id, timeout).await
        }
        JobsCommand::Get { id } => {
            let job = client.get_json(&format!("/v1/jobs/{}", segment(&id)?)).await?;
            match out {
                Output::Json => output::json(&job),
                Output::Human => output::job(&job),
            }
            Ok(exit::OK)
        }
        JobsCommand::Wait { id, timeout } => wait_for(client, out, segment(&id)?, timeout).await,
        JobsCommand::List { status, action, target, requested_by, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            for (k, v) in [("status", status), ("action", action), ("target", target), ("requested_by", requested_by)] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let page = client.get_query("/v1/jobs", &query).await?;
            match out {
                Output::Json => output::json(&page),
                Output::Human => output::list(&page),
            }
            Ok(exit::OK)
        }
        JobsCommand::Cancel { id } => {
            let job = client.post_empty(&format!("/v1/jobs/{}/cancel", segment(&id)?)).await?;
            match out {
                Output::Json => output::json(&job),
                Output::Human => output::job(&job),
            }
            Ok(exit::OK)
        }
        JobsCommand::Logs { id, follow } => {
            let id = segment(&id)?;
            if follow {
                return client.follow(id, out).await;
            }
            let events = client.get_json(&format!("/v1/jobs/{id}/events")).await?;
            for e in events.as_array().into_iter().flatten() {
                output::event(out, e);
            }
            Ok(exit::OK)
        }
    }
}

/// A job id as a path segment: a UUID, so nothing in it needs escaping.
fn segment(id: &str) -> Result<&str, Failure> {
    uuid::Uuid::try_parse(id).map(|_| id).map_err(|_| Failure::usage(format!("'{id}' is not a job id (a UUID)")))
}

/// The exit code of a terminal status.
fn status_code(status: &str) -> Option<u8> {
    match status {
        "SUCCESS" => Some(exit::OK),
        "FAILED" => Some(exit::FAILED),
        "CANCELED" => Some(exit::CANCELED),
        _ => None,
    }
}

/// Long-polls the job until it ends or `timeout` runs out, with a live status line on a
/// terminal.
async fn wait_for(client: &Client, out: Output, id: &str, timeout: Option<Duration>) -> Result<u8, Failure> {
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let mut line = output::StatusLine::new(out == Output::Human);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let wait = left.unwrap_or(Duration::from_secs(25)).min(Duration::from_secs(25));
        let job =
            client.get_query(&format!("/v1/jobs/{id}"), &[("wait", format!("{}ms", wait.as_millis().max(1)))]).await?;
        let status = job["status"].as_str().unwrap_or("?").to_owned();
        if let Some(code) = status_code(&status) {
            line.clear();
            match out {
                Output::Json => output::json(&job),
                Output::Human => output::job(&job),
            }
            return Ok(code);
        }
        line.show(id, &job, started.elapsed());
        if deadline.is_some_and(|d| Instant::now() >= d) {
            line.clear();
            match out {
                Output::Json => output::json(&serde_json::json!({"timeout": true, "job": job})),
                Output::Human => {
                    eprintln!("timed out after {:.1}s; job {id} is still {status}", started.elapsed().as_secs_f64())
                }
            }
            return Ok(exit::TIMEOUT);
        }
    }
}

/// The HTTP side.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self, Failure> {
        let base = args.url.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&base).map_err(|e| Failure::usage(format!("--url {base}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Failure::usage(format!("--url {base}: must be http or https")));
        }
        let token = match (&args.token_file, std::env::var("GATEWAY_TOKEN").ok().filter(|t| !t.is_empty())) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Failure::usage(format!("--token-file {}: {}", path.display(), e.kind())))?
                    .trim()
                    .to_owned(),
            ),
            (None, token) => token,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("automation-gateway-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::http(format!("HTTP client: {e}")))?;
        Ok(Self { http, base, token })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let resp = r
            .send()
            .await
            .map_err(|e| Failure::http(format!("cannot reach {}: {}", self.base, crate::telemetry::error_chain(&e))))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Failure::http(format!("reading the answer: {e}")))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let detail = body["detail"].as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
        let hint = match status.as_u16() {
            401 => " (set GATEWAY_TOKEN or --token-file)",
            _ => "",
        };
        Err(Failure::http(format!("{status}: {detail}{hint}")))
    }

    async fn submit(&self, body: &Value, key: Option<&str>) -> Result<Value, Failure> {
        let mut r = self.request(reqwest::Method::POST, "/v1/jobs").json(body);
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        self.send(r).await
    }

    async fn get_json(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn get_query(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        self.send(self.request(reqwest::Method::GET, path).query(query)).await
    }

    async fn post_empty(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.request(reqwest::Method::POST, path)).await
    }

    /// Prints the job's events from its stream until the terminal one, reconnecting after the
    /// last event seen if the connection drops.
    async fn follow(&self, id: &str, out: Output) -> Result<u8, Failure> {
        let mut last: Option<String> = None;
        let mut drops = 0;
        loop {
            let mut r = self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}/stream"));
            if let Some(l) = &last {
                r = r.header("Last-Event-ID", l);
            }
            let mut resp = match r.send().await {
                Ok(resp) if resp.status().is_success() => resp,
                Ok(resp) => {
                    let status = resp.status();
                    return Err(self.send_error(status, resp).await);
                }
                Err(e) if drops < 5 && last.is_some() => {
                    drops += 1;
                    eprintln!("stream dropped ({}); resuming", crate::telemetry::error_chain(&e));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => {
                    return Err(Failure::http(format!(
                        "cannot reach {}: {}",
                        self.base,
                        crate::telemetry::error_chain(&e)
                    )));
                }
            };
            let mut buf = String::new();
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => break,
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let message: String = buf.drain(..end + 2).collect();
                    let Some(event) = sse_data(&message) else { continue };
                    last = event["id"].as_i64().map(|i| i.to_string()).or(last);
                    output::event(out, &event);
                    if matches!(event["event"].as_str(), Some("finished" | "canceled")) {
                        let status = event["status"].as_str().unwrap_or_default();
                        return Ok(status_code(status).unwrap_or(exit::OK));
                    }
                }
            }
            drops += 1;
            if drops > 5 {
                return Err(Failure::http("the event stream kept dropping before the job ended"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn send_error(&self, status: reqwest::StatusCode, resp: reqwest::Response) -> Failure {
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let detail = body["detail"].as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
        Failure::http(format!("{status}: {detail}"))
    }
}

/// The JSON `data` of one SSE message (comments and other fields ignored).
fn sse_data(message: &str) -> Option<Value> {
    let data: Vec<&str> =
        message.lines().filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d))).collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn sse_messages() {
        let v = sse_data("id: 3\nevent: finished\ndata: {\"id\":3}\n\n").unwrap();
        assert_eq!(v["id"], 3);
        assert!(sse_data(": ping\n\n").is_none());
    }
}
