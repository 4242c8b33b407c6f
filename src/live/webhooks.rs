//! Completion webhooks: checking a `callback_url` at submission, and delivering from the durable
//! outbox, signed the Standard Webhooks way.
//!
//! A delivery is leased to one replica per try (the outbox row's lease), so each scheduled try is
//! made once; a replica that dies mid-try leaves the lease to run out and the try is made again
//! by another: at-least-once for the receiver, which deduplicates on the stable `webhook-id`.
//! Destinations are checked twice: the URL at submission (allowed hosts, IP literals), and every
//! resolved address at delivery, through the HTTP client's own resolver, so a name that later
//! resolves to an internal address (DNS rebinding) is refused too.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Settings;
use crate::jobs::{Job, JobId};
use crate::store::{DueWebhook, NextTry, Store, WebhookTry};
use crate::telemetry::Metrics;

/// Longest accepted `callback_url`.
pub const MAX_URL_LEN: usize = 2048;
/// Deliveries made at once by one replica.
const CONCURRENCY: usize = 16;
/// Longest wait between two retries.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Why the webhook set-up is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("webhook secret file {path}: {reason}")]
    Secret { path: String, reason: String },
    #[error("webhook HTTP client: {0}")]
    Client(String),
}

/// Renders a job as the API shows it (the webhook's `data`).
pub type Render = Arc<dyn Fn(&Job) -> serde_json::Value + Send + Sync>;

/// Everything about webhooks this process needs.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    /// Signing keys (decoded); empty when webhooks are off.
    secrets: Vec<Vec<u8>>,
    allowed: Vec<String>,
    allow_private: bool,
    retry_base: Duration,
    give_up_after: Duration,
    timeout: Duration,
}

impl Webhooks {
    pub fn from_settings(s: &Settings) -> Result<Self, SetupError> {
        let secrets = match &s.webhook_secret_file {
            None => Vec::new(),
            Some(path) => read_secrets(path)?,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                secrets,
                allowed: s
                    .webhook_allowed_hosts
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
                allow_private: s.webhook_allow_private,
                retry_base: Duration::from_millis(s.webhook_retry_base_ms),
                give_up_after: Duration::from_secs(s.webhook_give_up_after_s),
                timeout: Duration::from_millis(s.webhook_timeout_ms),
            }),
        })
    }

    /// Whether callbacks can be delivered (a signing secret is configured).
    pub fn enabled(&self) -> bool {
        !self.inner.secrets.is_empty()
    }

    /// Checks a callback URL for a new job (or a catalog default): its form, an allowed host,
    /// and no internal IP literal unless allowed. Returns the URL as stored.
    pub fn check_url(&self, raw: &str) -> Result<String, String> {
        if !self.enabled() {
            return Err("webhooks are not configured on this gateway (GATEWAY_WEBHOOK_SECRET_FILE)".into());
        }
        if raw.len() > MAX_URL_LEN {
            return Err(format!("must be at most {MAX_URL_LEN} characters"));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err("must name a host".into()),
        };
        let port = url.port_or_known_default().unwrap_or(443);
        if !self.inner.allowed.iter().any(|p| host_matches(p, &host, port)) {
            return Err(format!("host '{host}' is not in the allowed webhook hosts (GATEWAY_WEBHOOK_ALLOWED_HOSTS)"));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.inner.allow_private
            && is_internal(ip)
        {
            return Err(format!("{ip} is an internal address (set GATEWAY_WEBHOOK_ALLOW_PRIVATE to allow it)"));
        }
        Ok(url.to_string())
    }

    /// The `webhook-signature` header: one `v1,<base64>` per secret, space-separated.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.inner
            .secrets
            .iter()
            .map(|key| {
                // HMAC takes keys of any length; this cannot fail.
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// When the try after `attempt` failed ones is due, or `None` past the give-up time.
    fn next_try(&self, attempt: i32, ended_at_us: i64, now_us: i64) -> NextTry {
        let shift = (attempt.max(1) - 1).min(30) as u32;
        let delay = self.inner.retry_base.saturating_mul(1u32 << shift).min(MAX_DELAY);
        let next = now_us + delay.as_micros() as i64;
        if next > ended_at_us + self.inner.give_up_after.as_micros() as i64 {
            NextTry::GiveUp
        } else {
            NextTry::At(next)
        }
    }
}

/// The `webhook-id` of a job's delivery: the same for every try.
pub fn message_id(job: JobId) -> String {
    format!("msg_{}", job.0.simple())
}

fn read_secrets(path: &std::path::Path) -> Result<Vec<Vec<u8>>, SetupError> {
    let fail = |reason: String| SetupError::Secret { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {}", e.kind())))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).enumerate() {
        let b64 =
            line.strip_prefix("whsec_").ok_or_else(|| fail(format!("secret {} does not start with whsec_", n + 1)))?;
        let key = B64.decode(b64).map_err(|_| fail(format!("secret {} is not base64 after whsec_", n + 1)))?;
        if !(24..=64).contains(&key.len()) {
            return Err(fail(format!("secret {} must decode to 24 to 64 bytes", n + 1)));
        }
        keys.push(key);
    }
    match keys.len() {
        0 => Err(fail("holds no secret".into())),
        1 | 2 => Ok(keys),
        _ => Err(fail("holds more than two secrets (one, or two while rotating)".into())),
    }
}

/// `pattern` is a host glob (`*` matches any run of characters), optionally with `:port`.
fn host_matches(pattern: &str, host: &str, port: u16) -> bool {
    let (pat_host, pat_port) = match pattern.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (pattern, None), // bare IPv6
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, Some(p)),
            Err(_) => (pattern, None),
        },
        None => (pattern, None),
    };
    pat_port.is_none_or(|p| p == port) && crate::executor::glob_match(pat_host, host)
}

/// Addresses a webhook must not reach unless allowed: loopback, private (RFC 1918, ULA),
/// link-local, CGNAT, unspecified, multicast, broadcast, documentation and benchmarking ranges,
/// and IPv4 mapped into IPv6 for any of them.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// The HTTP client's resolver: the system's answer without the internal addresses (all of them
/// refused means the delivery fails with a clear error).
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.iter().copied().filter(|a| !is_internal(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} resolves only to internal addresses; refused (GATEWAY_WEBHOOK_ALLOW_PRIVATE)"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Delivers due webhooks until `stop`: wakes when this process ends a job with a callback, and
/// every second for retries and other replicas' deliveries.
pub async fn deliver_loop(
    hooks: Webhooks,
    store: Store,
    metrics: Arc<Metrics>,
    render: Render,
    owner: Uuid,
    stop: CancellationToken,
) -> Result<(), SetupError> {
    crate::install_tls_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(hooks.inner.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("automation-gateway/", env!("CARGO_PKG_VERSION")));
    if !hooks.inner.allow_private {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    let client = builder.build().map_err(|e| SetupError::Client(e.to_string()))?;
    let due = store.webhooks_due();
    // The lease outlives a try that takes the whole timeout, and its recording.
    let lease_us = (hooks.inner.timeout + Duration::from_secs(5)).as_micros() as i64;
    // One SQLite process owns the file: leases held at start-up are a dead process's.
    if let Err(e) = store.release_stale_webhook_leases().await {
        tracing::warn!(error = %e, "releasing webhook leases at start-up failed; they expire by themselves");
    }
    let mut running = tokio::task::JoinSet::new();
    // The earliest retry this process scheduled: woken for it, not only at the next tick.
    let mut next_retry: Option<tokio::time::Instant> = None;
    loop {
        let free = CONCURRENCY - running.len();
        if free > 0 && !stop.is_cancelled() {
            match store.claim_webhooks(owner, free, lease_us).await {
                Ok(batch) => {
                    for d in batch {
                        let (h, s, m, r, c) =
                            (hooks.clone(), store.clone(), metrics.clone(), render.clone(), client.clone());
                        running.spawn(async move { deliver(&h, &s, &m, &r, &c, owner, d).await });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
            }
        }
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        let wake = next_retry.map_or(tick, |r| r.min(tick));
        tokio::select! {
            _ = due.notified() => {}
            _ = tokio::time::sleep_until(wake) => {
                if next_retry.is_some_and(|r| r <= tokio::time::Instant::now()) {
                    next_retry = None;
                }
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(NextTry::At(at_us)) = done {
                    let wait = Duration::from_micros((at_us - crate::store::now_us()).max(0) as u64);
                    let at = tokio::time::Instant::now() + wait;
                    next_retry = Some(next_retry.map_or(at, |r| r.min(at)));
                }
            }
            _ = stop.cancelled() => {
                // Tries in flight finish (bounded by the timeout); their leases cover them.
                while running.join_next().await.is_some() {}
                return Ok(());
            }
        }
    }
}

/// One try of one delivery, logged, with what follows scheduled.
async fn deliver(
    hooks: &Webhooks,
    store: &Store,
    metrics: &Metrics,
    render: &Render,
    client: &reqwest::Client,
    owner: Uuid,
    d: DueWebhook,
) -> NextTry {
    let attempt = d.attempts + 1;
    let at = crate::store::now_us();
    let started = Instant::now();
    let outcome = match store.get(d.job_id).await {
        Ok(job) => {
            // The delivery belongs to the job's trace; the receiver gets it as `traceparent`.
            let span = tracing::debug_span!("webhook", job_id = %d.job_id, attempt);
            crate::telemetry::trace::set_parent(&span, job.traceparent.as_deref());
            tracing::Instrument::instrument(post(hooks, client, &d, &job, render), span).await
        }
        Err(e) => Err((None, format!("reading the job failed: {e}"))),
    };
    let latency_ms = started.elapsed().as_millis() as i64;
    let (status_code, error) = match &outcome {
        Ok(code) => (Some(*code), None),
        Err((code, e)) => (*code, Some(e.clone())),
    };
    let next = if outcome.is_ok() {
        NextTry::Delivered
    } else {
        hooks.next_try(attempt, d.created_at, crate::store::now_us())
    };
    let tried = WebhookTry { attempt, at, status_code, latency_ms, error: error.clone() };
    match store.record_webhook_try(owner, d.job_id, &tried, next).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(job_id = %d.job_id, attempt, "webhook lease lost during the try; another replica repeats it")
        }
        Err(e) => {
            tracing::warn!(job_id = %d.job_id, attempt, error = %e, "recording a webhook try failed; it is repeated after its lease")
        }
    }
    let label = match next {
        NextTry::Delivered => "success",
        NextTry::At(_) => "error",
        NextTry::GiveUp => "gave_up",
    };
    metrics.webhook_delivery(label);
    match next {
        NextTry::Delivered => tracing::info!(job_id = %d.job_id, attempt, status_code, latency_ms, "webhook delivered"),
        NextTry::At(t) => {
            tracing::warn!(job_id = %d.job_id, attempt, status_code, error = error.as_deref().unwrap_or(""), retry_at = %crate::jobs::rfc3339(t), "webhook delivery failed; retrying later")
        }
        NextTry::GiveUp => {
            tracing::error!(job_id = %d.job_id, attempt, status_code, error = error.as_deref().unwrap_or(""), "webhook delivery failed; given up")
        }
    }
    next
}

/// POSTs the job; the receiver's status on a 2xx, else the status (if any) and why.
async fn post(
    hooks: &Webhooks,
    client: &reqwest::Client,
    d: &DueWebhook,
    job: &Job,
    render: &Render,
) -> Result<i32, (Option<i32>, String)> {
    let now = chrono::Utc::now();
    let body = serde_json::json!({
        "type": "job.finished",
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": render(job),
    });
    let body = serde_json::to_vec(&body).map_err(|e| (None, e.to_string()))?;
    let id = message_id(d.job_id);
    let ts = now.timestamp();
    let response = crate::telemetry::trace::traced(client.post(&d.url))
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", hooks.sign(&id, ts, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| (None, crate::telemetry::error_chain(&e.without_url())))?;
    let code = i32::from(response.status().as_u16());
    if response.status().is_success() {
        Ok(code)
    } else {
        Err((Some(code), format!("receiver answered {}", response.status())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(allowed: &[&str], private: bool) -> Webhooks {
        Webhooks {
            inner: Arc::new(Inner {
                secrets: vec![b"0123456789abcdef0123456789abcdef".to_vec()],
                allowed: allowed.iter().map(|s| s.to_string()).collect(),
                allow_private: private,
                retry_base: Duration::from_secs(5),
                give_up_after: Duration::from_secs(86_400),
                timeout: Duration::from_secs(10),
            }),
        }
    }

    #[test]
    fn urls_need_an_allowed_host_and_no_internal_literal() {
        let h = hooks(&["hooks.example.com", "*.corp.example:8443", "127.0.0.1", "10.1.2.3"], false);
        assert!(h.check_url("https://hooks.example.com/x").is_ok());
        assert!(h.check_url("https://a.corp.example:8443/x").is_ok());
        assert!(h.check_url("https://a.corp.example/x").unwrap_err().contains("not in the allowed"));
        assert!(h.check_url("https://evil.example/x").unwrap_err().contains("not in the allowed"));
        assert!(h.check_url("http://127.0.0.1:9/x").unwrap_err().contains("internal"));
        assert!(h.check_url("http://10.1.2.3/x").unwrap_err().contains("internal"));
        assert!(h.check_url("ftp://hooks.example.com/x").is_err());
        assert!(h.check_url("https://u:p@hooks.example.com/x").is_err());
        assert!(hooks(&["127.0.0.1"], true).check_url("http://127.0.0.1:9/x").is_ok());
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn signature_follows_standard_webhooks() {
        // The Standard Webhooks reference vector: secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,
        // id msg_p5jXN8AQM9LWM0D4loKWxJek, timestamp 1614265330, body {"test": 2432232314}.
        let mut h = hooks(&[], false);
        Arc::get_mut(&mut h.inner).unwrap().secrets = vec![B64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()];
        assert_eq!(
            h.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retries_double_then_give_up() {
        let h = hooks(&[], false);
        let day = 86_400_000_000i64;
        assert_eq!(h.next_try(1, 0, 0), NextTry::At(5_000_000));
        assert_eq!(h.next_try(3, 0, 0), NextTry::At(20_000_000));
        assert_eq!(h.next_try(20, 0, 0), NextTry::At(3_600_000_000));
        assert_eq!(h.next_try(1, 0, day), NextTry::GiveUp);
    }
}
