//! The HTTP side's settings (flags with environment fallbacks): where to listen, limits,
//! timeouts, authentication.

use std::net::SocketAddr;

/// How the API is served and protected.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "http")]
pub struct Settings {
    /// Address and port to serve HTTP on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub max_body_bytes: u64,

    /// Seconds a request may take, from its headers to the end of its answer (a slow body
    /// counts); past it the client gets 408 (while reading the body) or 503.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,

    /// Seconds a client may take to start and send a request's headers; slower connections are
    /// closed (slowloris protection), and so are connections idle this long between requests.
    #[arg(long, env = "GATEWAY_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_timeout_secs: u64,

    /// Open HTTP connections this process serves at once; past it, new connections are closed at
    /// once (logged, and counted in `automation_http_connections_refused_total`). At start the
    /// process raises its soft open-files limit to the hard limit.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Milliseconds between SIGTERM and closing the listener: readiness fails at once, but
    /// requests are still served meanwhile, so a load balancer can take the replica out of
    /// rotation before connections are refused (like a preStop delay).
    #[arg(long, env = "GATEWAY_SHUTDOWN_DELAY_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_delay_ms: u64,

    /// API tokens file (YAML: name, sha256, actions, can_read, can_cancel per token). When set,
    /// every `/v1` request needs `Authorization: Bearer <token>`; the file is re-read when it
    /// changes, so tokens rotate without a restart. Unset: the API is open (logged loudly).
    #[arg(long, env = "GATEWAY_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<std::path::PathBuf>,

    /// Require a valid token for `/metrics` too (when a tokens file is set).
    #[arg(long, env = "GATEWAY_METRICS_REQUIRE_TOKEN", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_require_token: bool,

    /// Requests per second each identity may make to `/v1` (a token bucket); 0 turns the limit
    /// off. Over the limit: 429 with Retry-After.
    #[arg(long, env = "GATEWAY_RATE_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub rate_limit: u32,

    /// Burst size of the per-identity rate limit.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_BURST", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate_limit_burst: u32,
}
