//! One HTTP request; success is one of the expected statuses. Not resumable: a request has no
//! identity to follow after a crash, so a lost run falls to the action's `on_lost`.

use std::path::PathBuf;
use std::sync::Arc;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::remote;
use super::template::{Escape, JsonTemplate, Template};
use super::{Built, Needs, Recorder, RunError, RunFuture, RunRequest, Runner, settings};

/// Bytes of the answer kept in the job's result.
const KEPT: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_method")]
    method: String,
    url: String,
    #[serde(default)]
    expect_status: Option<Vec<u16>>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn default_method() -> String {
    "GET".into()
}

enum Body {
    Text(Template),
    Json(JsonTemplate),
}

struct Http {
    method: Method,
    url: Template,
    expect: Option<Vec<u16>>,
    headers: Vec<(reqwest::header::HeaderName, Template)>,
    body: Option<Body>,
    token_file: Option<PathBuf>,
    http: reqwest::Client,
}

pub(super) fn build(value: Value) -> Result<Built, String> {
    let s: Settings = settings("http", value)?;
    let mut needs = Needs::default();
    let method = Method::from_bytes(s.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("http.method: '{}' is not an HTTP method", s.method))?;
    let url = needs.template(&s.url, "http.url")?;
    if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
        return Err(format!("http.url: '{}' must start with http:// or https://", s.url));
    }
    let mut headers = Vec::new();
    for (k, v) in &s.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("http.headers: '{k}' is not a header name"))?;
        headers.push((name, needs.template(v, &format!("http.headers.{k}"))?));
    }
    let body = match &s.body {
        None => None,
        Some(Value::String(t)) => Some(Body::Text(needs.template(t, "http.body")?)),
        Some(v @ (Value::Object(_) | Value::Array(_))) => Some(Body::Json(needs.json(v, "http.body")?)),
        Some(_) => return Err("http.body: must be a string or a mapping".into()),
    };
    if let Some(codes) = &s.expect_status
        && (codes.is_empty() || codes.iter().any(|c| !(100..=599).contains(c)))
    {
        return Err("http.expect_status: a non-empty list of statuses (100 to 599)".into());
    }
    let root = match &s.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("http.ca_file: cannot read {}: {}", path.display(), e.kind()))?;
            Some(reqwest::Certificate::from_pem(&pem).map_err(|e| format!("http.ca_file: {}: {e}", path.display()))?)
        }
        None => None,
    };
    let runner = Http {
        method,
        url,
        expect: s.expect_status,
        headers,
        body,
        token_file: s.token_file.clone(),
        http: remote::client(root)?,
    };
    Ok(Built { runner: Arc::new(runner), needs: needs.into_inner(), secret_files: s.token_file.into_iter().collect() })
}

impl Http {
    fn expected(&self, status: u16) -> bool {
        match &self.expect {
            Some(codes) => codes.contains(&status),
            None => (200..300).contains(&status),
        }
    }
}

impl Runner for Http {
    fn run<'a>(&'a self, request: &'a RunRequest, _recorder: &'a dyn Recorder) -> RunFuture<'a> {
        Box::pin(async move {
            let id = request.job_id.to_string();
            let vars = request.vars(&id);
            let url = self.url.render(&vars, Escape::Url).map_err(RunError::permanent)?;
            let shown = format!("{} {}", self.method, url.split('?').next().unwrap_or(""));
            let mut req = self.http.request(self.method.clone(), &url);
            // A request without its own limit would wait for the whole attempt's timeout.
            req = req.timeout(std::time::Duration::from_secs(24 * 3600));
            let has_type = self.headers.iter().any(|(n, _)| n == reqwest::header::CONTENT_TYPE);
            match &self.body {
                Some(Body::Text(t)) => {
                    if !has_type {
                        req = req.header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8");
                    }
                    req = req.body(t.render(&vars, Escape::None).map_err(RunError::permanent)?);
                }
                Some(Body::Json(t)) => {
                    let doc = t.render(&vars).map_err(RunError::permanent)?;
                    if !has_type {
                        req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
                    }
                    req = req.body(doc.to_string());
                }
                None => {}
            }
            for (name, t) in &self.headers {
                let v = t.render(&vars, Escape::None).map_err(RunError::permanent)?;
                let v = reqwest::header::HeaderValue::from_str(&v).map_err(|_| {
                    RunError::permanent(format!("http.headers.{name}: the rendered value is not a valid header value"))
                })?;
                req = req.header(name, v);
            }
            if let Some(path) = &self.token_file {
                req = req.bearer_auth(remote::read_secret(path).await?);
            }
            let mut resp =
                remote::traced(req).send().await.map_err(|e| remote::unreachable(&format!("http: {shown}"), e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let mut kept = Vec::new();
            while kept.len() < KEPT {
                match resp.chunk().await {
                    Ok(Some(c)) => kept.extend_from_slice(&c[..c.len().min(KEPT - kept.len())]),
                    Ok(None) => break,
                    Err(e) => return Err(remote::unreachable(&format!("http: {shown}"), e)),
                }
            }
            let body = String::from_utf8_lossy(&kept).into_owned();
            if self.expected(status.as_u16()) {
                return Ok(json!({"status": status.as_u16(), "body": body}));
            }
            let wanted = match &self.expect {
                Some(c) => c.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
                None => "2xx".into(),
            };
            let mut e = remote::unexpected(&format!("http: {shown}"), status, &headers, &body);
            e.message = format!("http: {shown} answered {}, expected {wanted}", status.as_u16());
            // An unexpected success or redirect is an ordinary failed attempt; 4xx is permanent.
            if status.as_u16() < 400 {
                e.kind = super::ErrorKind::Retryable;
            }
            Err(e)
        })
    }
}
