//! What the HTTP-speaking runners share: the client, token files, how an answer is judged
//! (permanent or retryable), and the polling loop that follows a remote run.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{ErrorKind, RunError};

/// Longest wait for one request to a backend (a launch, a poll, a cancel); the attempt's own
/// timeout bounds the whole run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of a backend's error answer quoted in a job's error.
const QUOTED: usize = 300;

/// A client for one runner: connections are reused across its runs.
pub(super) fn client(extra_root: Option<reqwest::Certificate>) -> Result<reqwest::Client, String> {
    crate::install_tls_provider();
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("automation-gateway/", env!("CARGO_PKG_VERSION")))
        // A redirect could carry the Authorization header to another host: follow none.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(cert) = extra_root {
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// A secret from a file (re-read at each use, so a rotated Secret takes effect), trimmed.
/// Errors name the file, never its content.
pub(super) async fn read_secret(path: &Path) -> Result<String, RunError> {
    match tokio::fs::read_to_string(path).await {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Ok(_) => Err(RunError::permanent(format!("token_file {} is empty", path.display()))),
        Err(e) => Err(RunError::permanent(format!("cannot read token_file {}: {}", path.display(), e.kind()))),
    }
}

/// A request that got no answer: worth another try.
pub(super) fn unreachable(what: &str, e: reqwest::Error) -> RunError {
    // Without the URL's query: it may carry values a caller put in parameters.
    RunError::retryable(format!("{what}: request failed: {}", e.without_url()))
}

/// An answer other than the one expected: 5xx, 408 and 429 are worth another try (429 and 503
/// after their `Retry-After`); any other 4xx will not get better.
pub(super) fn unexpected(what: &str, status: StatusCode, headers: &HeaderMap, body: &str) -> RunError {
    let quoted: String = body.chars().take(QUOTED).collect();
    let message = format!("{what} answered {}: {}", status.as_u16(), quoted.trim());
    let retryable =
        status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS;
    let mut e = if retryable { RunError::retryable(message) } else { RunError::permanent(message) };
    e.retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    e
}

/// Outgoing requests carry the attempt's trace context.
pub(super) use crate::telemetry::trace::traced;

/// Sends a request and reads its answer as JSON when its status is one of `ok`.
pub(super) async fn call(
    what: &str,
    request: reqwest::RequestBuilder,
    ok: &[u16],
) -> Result<(StatusCode, HeaderMap, Value), RunError> {
    let resp = traced(request).send().await.map_err(|e| unreachable(what, e))?;
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.map_err(|e| unreachable(what, e))?;
    if !ok.contains(&status.as_u16()) {
        return Err(unexpected(what, status, &headers, &text));
    }
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|e| RunError::permanent(format!("{what}: the answer is not JSON: {e}")))?
    };
    Ok((status, headers, body))
}

/// Follows a remote run: calls `look` every `every` until it returns a value. A retryable
/// error while following (the backend restarting, a network blip) is logged and tried again at
/// the next tick: the run goes on without us, and the attempt's timeout bounds the wait.
pub(super) async fn follow<T, F, Fut>(what: &str, every: Duration, mut look: F) -> Result<T, RunError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, RunError>>,
{
    loop {
        match look().await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(e) if e.kind == ErrorKind::Retryable => {
                tracing::warn!(runner = what, error = %e, "following a remote run failed; trying again");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(every).await;
    }
}

/// A base URL without its trailing slashes.
pub(super) fn base(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("url: '{url}' is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("url: '{url}' must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url: credentials belong in token_file, not in the URL".into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The last `lines` lines of `text`, at most `bytes` bytes.
pub(super) fn tail(text: &str, lines: usize, bytes: usize) -> String {
    let start = text.trim_end().rmatch_indices('\n').nth(lines.saturating_sub(1)).map_or(0, |(i, _)| i + 1);
    let mut t = &text.trim_end()[start..];
    while t.len() > bytes {
        let mut cut = t.len() - bytes;
        while !t.is_char_boundary(cut) {
            cut += 1;
        }
        t = &t[cut..];
    }
    t.to_owned()
}

/// A poll interval setting, in milliseconds, kept sane.
pub(super) fn interval(ms: u64) -> Result<Duration, String> {
    if !(10..=600_000).contains(&ms) {
        return Err(format!("poll_interval_ms: {ms} is outside 10..600000"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines_within_the_bytes() {
        assert_eq!(tail("a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail("abcdef", 5, 3), "def");
    }

    #[test]
    fn statuses_are_judged() {
        let h = HeaderMap::new();
        assert_eq!(unexpected("x", StatusCode::BAD_REQUEST, &h, "").kind, ErrorKind::Permanent);
        assert_eq!(unexpected("x", StatusCode::BAD_GATEWAY, &h, "").kind, ErrorKind::Retryable);
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        let e = unexpected("x", StatusCode::TOO_MANY_REQUESTS, &h, "");
        assert_eq!((e.kind, e.retry_after), (ErrorKind::Retryable, Some(Duration::from_secs(2))));
    }
}
