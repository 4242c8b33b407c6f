//! Who is calling, and what they may do: API tokens from a YAML file (each stored as the SHA-256
//! of the token, never the token), compared in constant time; per-action create rights and the
//! read/cancel rights; and a per-identity rate limit. Knows nothing about HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::jobs::Action;

/// The tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid tokens file {path}: {reason}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    actions: Vec<String>,
    #[serde(default)]
    can_read: bool,
    #[serde(default)]
    can_cancel: bool,
}

/// What one token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name: recorded on jobs and in the audit log. `anonymous` when
    /// authentication is off.
    pub name: String,
    /// Actions it may trigger; `None` means all.
    actions: Option<Vec<Action>>,
    can_read: bool,
    can_cancel: bool,
}

impl Identity {
    /// The caller when authentication is off: may do everything.
    pub fn anonymous() -> Self {
        Self { name: "anonymous".into(), actions: None, can_read: true, can_cancel: true }
    }

    /// May it trigger this action?
    pub fn may_create(&self, action: Action) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(&action))
    }

    /// May it read jobs?
    pub fn may_read(&self) -> bool {
        self.can_read
    }

    /// May it cancel jobs?
    pub fn may_cancel(&self) -> bool {
        self.can_cancel
    }
}

struct Token {
    hash: [u8; 32],
    identity: Identity,
}

/// The loaded tokens.
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// Parses a tokens file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Invalid { path: path.to_owned(), reason };
        let file: File = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut tokens = Vec::with_capacity(file.tokens.len());
        for (i, e) in file.tokens.into_iter().enumerate() {
            let name = e.name.trim().to_owned();
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err(invalid(format!("tokens[{i}].name must be 1 to 128 printable characters")));
            }
            let bytes = hex::decode(e.sha256.trim())
                .map_err(|_| invalid(format!("tokens[{i}] ({name}): sha256 is not hex")))?;
            let hash: [u8; 32] =
                bytes.try_into().map_err(|_| invalid(format!("tokens[{i}] ({name}): sha256 must be 64 hex digits")))?;
            let actions = if e.actions.iter().any(|a| a == "*") {
                None
            } else {
                let parsed = e
                    .actions
                    .iter()
                    .map(|a| a.parse::<Action>().map_err(|err| invalid(format!("tokens[{i}] ({name}): {err}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(parsed)
            };
            if tokens.iter().any(|t: &Token| t.identity.name == name) {
                return Err(invalid(format!("tokens[{i}]: duplicate name {name}")));
            }
            tokens.push(Token {
                hash,
                identity: Identity { name, actions, can_read: e.can_read, can_cancel: e.can_cancel },
            });
        }
        Ok(Self { tokens })
    }

    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// The identity a presented token belongs to. The token is hashed, and the hash compared
    /// with every stored hash in constant time, without stopping at a match, so neither the
    /// comparison nor the position of the match leaks through timing.
    pub fn authenticate(&self, presented: &str) -> Option<&Identity> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.hash.ct_eq(&digest)) {
                found = Some(&t.identity);
            }
        }
        found
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when the file lists no token (then nothing can authenticate).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token, while authentication is on.
    Missing,
    /// A token that matches no entry.
    Unknown,
}

/// Authentication: off (open API), or a tokens file re-read when it changes so tokens rotate
/// without a restart (a Kubernetes Secret update reaches the mounted file by itself).
#[derive(Clone)]
pub struct Authenticator {
    inner: Option<Arc<Reloading>>,
}

struct Reloading {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
    last_text: Mutex<String>,
}

impl Authenticator {
    /// Authentication off: every caller is `anonymous` with every right.
    pub fn open() -> Self {
        Self { inner: None }
    }

    /// Loads the tokens file; fails on an unreadable or invalid file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        let tokens = Tokens::parse(path, &text)?;
        Ok(Self {
            inner: Some(Arc::new(Reloading {
                path: path.to_owned(),
                tokens: RwLock::new(Arc::new(tokens)),
                last_text: Mutex::new(text),
            })),
        })
    }

    /// True when a token is required.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Tokens configured (0 when off).
    pub fn token_count(&self) -> usize {
        self.inner.as_ref().and_then(|r| r.tokens.read().ok().map(|t| t.len())).unwrap_or(0)
    }

    /// The caller's identity from an optional bearer token.
    pub fn identify(&self, bearer: Option<&str>) -> Result<Identity, Refusal> {
        let Some(r) = &self.inner else { return Ok(Identity::anonymous()) };
        let token = bearer.ok_or(Refusal::Missing)?;
        let tokens = r.tokens.read().map(|t| t.clone()).map_err(|_| Refusal::Unknown)?;
        tokens.authenticate(token).cloned().ok_or(Refusal::Unknown)
    }

    /// Re-reads the file if it changed. An invalid new file is reported and the previous tokens
    /// stay in force. Returns true when new tokens were loaded.
    pub fn reload(&self) -> Result<bool, Error> {
        let Some(r) = &self.inner else { return Ok(false) };
        let text = std::fs::read_to_string(&r.path).map_err(|source| Error::Read { path: r.path.clone(), source })?;
        let mut last =
            r.last_text.lock().map_err(|_| Error::Invalid { path: r.path.clone(), reason: "lock poisoned".into() })?;
        if *last == text {
            return Ok(false);
        }
        let tokens = Tokens::parse(&r.path, &text)?;
        if let Ok(mut t) = r.tokens.write() {
            *t = Arc::new(tokens);
        }
        *last = text;
        Ok(true)
    }
}

/// A token bucket per identity: `rate` requests a second, bursts up to `burst`. Identities
/// come from the tokens file (or are the single `anonymous`), so the map stays small.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` 0 disables the limit.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self { rate: f64::from(rate), burst: f64::from(burst.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from the identity's bucket; `Err(wait)` when it is empty.
    pub fn check(&self, identity: &str) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        if !buckets.contains_key(identity) {
            buckets.insert(identity.to_owned(), (self.burst, now));
        }
        let Some((tokens, last)) = buckets.get_mut(identity) else { return Ok(()) };
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(token: &str) -> String {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        format!(
            "tokens:\n  - name: ci-bot\n    sha256: \"{hash}\"\n    actions: [health_check]\n    can_read: true\n  - name: admin\n    sha256: \"{}\"\n    actions: [\"*\"]\n    can_read: true\n    can_cancel: true\n",
            hex::encode(Sha256::digest(b"admin-token"))
        )
    }

    #[test]
    fn a_token_maps_to_its_identity_and_rights() {
        let t = Tokens::parse(Path::new("t.yaml"), &file("secret-1")).unwrap();
        let id = t.authenticate("secret-1").unwrap();
        assert_eq!(id.name, "ci-bot");
        assert!(id.may_create(Action::HealthCheck));
        assert!(!id.may_create(Action::RestartService));
        assert!(id.may_read() && !id.may_cancel());
        assert!(t.authenticate("admin-token").unwrap().may_create(Action::RestartService));
        assert!(t.authenticate("secret-2").is_none());
        assert!(t.authenticate("").is_none());
    }

    #[test]
    fn invalid_files_are_refused_with_the_reason() {
        let bad = [
            ("tokens: [{name: a, sha256: zz, actions: []}]", "not hex"),
            ("tokens: [{name: a, sha256: abcd, actions: []}]", "64 hex digits"),
            ("tokens: [{name: a, sha256: abcd, actions: [], can_delete: true}]", "unknown field"),
        ];
        for (text, why) in bad {
            let err = Tokens::parse(Path::new("t.yaml"), text).err().unwrap().to_string();
            assert!(err.contains(why), "{err}");
        }
        let unknown_action = format!("tokens: [{{name: a, sha256: \"{}\", actions: [reboot]}}]", "0".repeat(64));
        assert!(Tokens::parse(Path::new("t.yaml"), &unknown_action).is_err());
    }

    #[test]
    fn the_rate_limit_refuses_past_the_burst_and_refills() {
        let rl = RateLimiter::new(10, 2);
        assert!(rl.check("a").is_ok());
        assert!(rl.check("a").is_ok());
        let wait = rl.check("a").unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        assert!(rl.check("b").is_ok(), "buckets are per identity");
        std::thread::sleep(Duration::from_millis(120));
        assert!(rl.check("a").is_ok());
    }
}
