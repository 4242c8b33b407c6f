//! Settings of the live side (flags with environment fallbacks): event streams and completion
//! webhooks.

use std::path::PathBuf;
use std::time::Duration;

/// How events are streamed and webhooks delivered.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "live")]
pub struct Settings {
    /// Milliseconds between heartbeat comments on an idle event stream (keeps proxies from
    /// closing it).
    #[arg(long, env = "GATEWAY_SSE_HEARTBEAT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub sse_heartbeat_ms: u64,

    /// Events a stream may fall behind by before it is dropped (the client resumes with
    /// `Last-Event-ID`); memory is bounded by this, per process, not per stream.
    #[arg(long, env = "GATEWAY_SSE_BUFFER", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub sse_buffer: u64,

    /// Milliseconds between reads of the event log for other replicas' events (PostgreSQL,
    /// only while this replica has streams open).
    #[arg(long, env = "GATEWAY_EVENT_POLL_MS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(5..=10_000))]
    pub event_poll_ms: u64,

    /// File holding the webhook signing secret(s), `whsec_<base64>`, one per line; two lines
    /// while rotating (every delivery is signed with both). Without it, callbacks are refused.
    #[arg(long, env = "GATEWAY_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Hosts a `callback_url` may name: comma-separated patterns with `*` globs, optionally with
    /// `:port` (`hooks.example.com,*.corp.example:8443`). Empty: no callback is allowed.
    #[arg(long, env = "GATEWAY_WEBHOOK_ALLOWED_HOSTS", default_value = "", value_delimiter = ',')]
    pub webhook_allowed_hosts: Vec<String>,

    /// Allow callbacks to loopback, private, link-local and other internal addresses (refused by
    /// default, checked again on the resolved address at each delivery).
    #[arg(long, env = "GATEWAY_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// Milliseconds before the first retry of a failed delivery; each retry doubles it, up to an
    /// hour.
    #[arg(long, env = "GATEWAY_WEBHOOK_RETRY_BASE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub webhook_retry_base_ms: u64,

    /// Seconds after the job ended when a delivery that keeps failing is given up.
    #[arg(long, env = "GATEWAY_WEBHOOK_GIVE_UP_AFTER_S", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub webhook_give_up_after_s: u64,

    /// Milliseconds a receiver has to answer one delivery.
    #[arg(long, env = "GATEWAY_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub webhook_timeout_ms: u64,
}

impl Settings {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.sse_heartbeat_ms)
    }
}
