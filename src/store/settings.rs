//! The store's settings (flags with environment fallbacks), and the database URL, whose secrets
//! never reach a log line or an error message.

use std::fmt;
use std::str::FromStr;

/// How to reach and bound the database.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "store")]
pub struct Settings {
    /// Database: `sqlite://PATH?mode=rwc` (one process) or `postgres://USER@HOST/DB` (many replicas).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://automation-gateway.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// Connections in the database pool (PostgreSQL; SQLite uses one writer and a few readers).
    /// At least 4: the batched point reader keeps one for good, and with a single one left for
    /// claims, results and heartbeats, a replica whose jobs were polled stopped running them.
    #[arg(long, env = "GATEWAY_DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(4..=1000))]
    pub db_max_connections: u32,

    /// Pending jobs accepted before new ones are refused with 429 and Retry-After.
    #[arg(long, env = "GATEWAY_MAX_PENDING", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_pending: u64,

    /// Largest size of the SQLite database file in MiB (SQLite's `max_page_count`); 0 means no
    /// cap. Reaching it behaves exactly as a full disk: new jobs get 503 `storage-full`, nothing
    /// accepted is lost, and writes resume once room is made (retention, a larger cap).
    #[arg(long, env = "GATEWAY_SQLITE_MAX_SIZE_MB", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16_777_216))]
    pub sqlite_max_size_mb: u64,
}

/// A database URL whose password is never printed.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The full URL, with its secret: pass it to the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for a PostgreSQL URL.
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
}

/// Query parameters that carry a secret in a PostgreSQL URL (libpq and sqlx spellings).
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "passfile"];

impl DatabaseUrl {
    /// Checks the URL's form. Done here rather than in `FromStr`, because clap prints a rejected
    /// value in its error message, password included.
    pub fn check(&self) -> Result<(), String> {
        if !["sqlite:", "postgres://", "postgresql://"].iter().any(|p| self.0.starts_with(p)) {
            return Err(format!("DATABASE_URL {self} must start with sqlite:, postgres:// or postgresql://"));
        }
        if self.is_postgres() {
            url::Url::parse(&self.0).map_err(|e| format!("DATABASE_URL {self} is not a valid URL: {e}"))?;
        }
        Ok(())
    }

    /// The URL to hand to the PostgreSQL driver: without the query parameters it does not
    /// support and would log, value included, as "unrecognized" (`sslpassword` protects a client
    /// key, which the driver cannot decrypt anyway). Returns the URL and the names dropped.
    pub fn for_driver(&self) -> (String, Vec<String>) {
        const UNSUPPORTED: &[&str] = &["sslpassword", "passfile"];
        let Ok(mut u) = url::Url::parse(&self.0) else { return (self.0.clone(), Vec::new()) };
        if u.query().is_none() {
            return (self.0.clone(), Vec::new());
        }
        let mut dropped = Vec::new();
        let kept: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| {
                let unsupported = UNSUPPORTED.contains(&k.to_ascii_lowercase().as_str());
                if unsupported {
                    dropped.push(k.to_string());
                }
                !unsupported
            })
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if dropped.is_empty() {
            return (self.0.clone(), dropped);
        }
        if kept.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(kept);
        }
        (u.to_string(), dropped)
    }

    /// `text` (say, a driver's error message) with every secret of this URL replaced.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.0, &self.to_string());
        for secret in self.secrets() {
            if secret.len() >= 2 {
                out = out.replace(&secret, "REDACTED");
            }
        }
        out
    }

    /// The secrets in the URL, raw and decoded.
    fn secrets(&self) -> Vec<String> {
        let Ok(u) = url::Url::parse(&self.0) else {
            // Unparseable: take what sits where a password would, `scheme://user:PASSWORD@`.
            let userinfo = self.0.split_once("://").and_then(|(_, rest)| rest.rsplit_once('@')).map(|(ui, _)| ui);
            return userinfo.and_then(|ui| ui.split_once(':')).map(|(_, p)| vec![p.to_owned()]).unwrap_or_default();
        };
        let mut out = Vec::new();
        if let Some(p) = u.password() {
            out.push(p.to_owned());
            if let Ok(decoded) = percent_decode(p) {
                out.push(decoded);
            }
        }
        for (k, v) in u.query_pairs() {
            if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                out.push(v.into_owned());
            }
        }
        out
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

impl FromStr for DatabaseUrl {
    type Err = String;

    /// Accepts any text: `check` validates it without echoing secrets.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for DatabaseUrl {
    /// The URL with its password and secret query parameters replaced by `REDACTED`; a URL that
    /// does not parse shows only its scheme.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.starts_with("sqlite:") && !self.0.contains('@') {
            // A file path: nothing secret in it.
            return f.write_str(&self.0);
        }
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("REDACTED"));
                }
                if u.query().is_some() {
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str());
                            (k.into_owned(), if secret { "REDACTED".to_owned() } else { v.into_owned() })
                        })
                        .collect();
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                f.write_str(u.as_str())
            }
            Err(_) => {
                let scheme = self
                    .0
                    .split_once(':')
                    .map(|(s, _)| s)
                    .filter(|s| {
                        !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
                    })
                    .unwrap_or("?");
                write!(f, "{scheme}:<unparseable URL, redacted>")
            }
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted() {
        for raw in [
            "postgres://app:hunter2@db:5432/gw",
            "postgres://app@db/gw?sslmode=require&password=hunter2",
            "postgresql://app@db/gw?sslpassword=hunter2&application_name=x",
            "postgres://app:hunter2@[bad/db",
            "postgresx://app:hunter2@db/gw",
        ] {
            let u: DatabaseUrl = raw.parse().unwrap();
            assert!(!u.to_string().contains("hunter2"), "{u}");
            assert!(!format!("{u:?}").contains("hunter2"));
            if let Err(e) = u.check() {
                assert!(!e.contains("hunter2"), "{e}");
            }
            assert!(!u.scrub(&format!("failed: {raw} / hunter2")).contains("hunter2"));
        }
        let kept: DatabaseUrl = "postgres://app@db/gw?sslmode=require&password=x1".parse().unwrap();
        assert!(kept.to_string().contains("sslmode=require"), "{kept}");
        assert!(kept.check().is_ok());
        assert!("postgresx://db/gw".parse::<DatabaseUrl>().unwrap().check().is_err());
    }
}
