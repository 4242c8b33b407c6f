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
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid tokens file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The file is larger than any real tokens file.
    #[error("tokens file {path} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit; not read")]
    TooLarge { path: PathBuf, size: u64 },
}

/// Largest tokens file read: about 5 000 tokens. A larger file is a mistake or an attack, and
/// parsing it would pin memory and CPU.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

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
    /// Actions whose jobs `can_read` and `can_cancel` cover; `actions` when absent.
    #[serde(default)]
    scope: Option<Vec<String>>,
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
    /// Actions whose jobs it may read and cancel (with those rights); `None` means all.
    scope: Option<Vec<Action>>,
    can_read: bool,
    can_cancel: bool,
}

impl Identity {
    /// The caller when authentication is off: may do everything.
    pub fn anonymous() -> Self {
        Self { name: "anonymous".into(), actions: None, scope: None, can_read: true, can_cancel: true }
    }

    /// Are jobs of this action within the token's scope for reading and cancelling? The scope
    /// is the entry's `scope`, or its `actions` when it has none (least privilege: a token for
    /// one action never sees another action's jobs unless its entry says so).
    pub fn in_scope(&self, action: Action) -> bool {
        self.scope.as_ref().is_none_or(|a| a.contains(&action))
    }

    /// The actions in scope; `None` means every action.
    pub fn scope(&self) -> Option<&[Action]> {
        self.scope.as_deref()
    }

    /// May it trigger this action?
    pub fn may_create(&self, action: Action) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(&action))
    }

    /// May it read jobs (of the actions in its scope)?
    pub fn may_read(&self) -> bool {
        self.can_read
    }

    /// May it cancel jobs (of the actions in its scope)?
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
    /// `known` is the catalog's actions: a token may name only those.
    pub fn parse(path: &Path, text: &str, known: &[Action]) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Invalid { path: path.to_owned(), reason };
        // An emptied file revokes every token, as `tokens: []` does (fail closed).
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(Self { tokens: Vec::new() });
        }
        let file: File = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut tokens = Vec::with_capacity(file.tokens.len());
        let mut names = std::collections::HashSet::with_capacity(file.tokens.len());
        let mut hashes = std::collections::HashSet::with_capacity(file.tokens.len());
        for (i, e) in file.tokens.into_iter().enumerate() {
            let name = e.name.trim().to_owned();
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err(invalid(format!("tokens[{i}].name must be 1 to 128 printable characters")));
            }
            let bytes = hex::decode(e.sha256.trim())
                .map_err(|_| invalid(format!("tokens[{i}] ({name}): sha256 is not hex")))?;
            let hash: [u8; 32] =
                bytes.try_into().map_err(|_| invalid(format!("tokens[{i}] ({name}): sha256 must be 64 hex digits")))?;
            let parse_list = |list: &[String]| -> Result<Option<Vec<Action>>, Error> {
                if list.iter().any(|a| a == "*") {
                    return Ok(None);
                }
                list.iter()
                    .map(|a| {
                        known.iter().copied().find(|k| k.as_str() == a).ok_or_else(|| {
                            let names: Vec<&str> = known.iter().map(|k| k.as_str()).collect();
                            invalid(format!(
                                "tokens[{i}] ({name}): unknown action '{a}'; actions: {}",
                                names.join(", ")
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            };
            let actions = parse_list(&e.actions)?;
            let scope = match &e.scope {
                Some(list) => parse_list(list)?,
                None => actions.clone(),
            };
            if !names.insert(name.clone()) {
                return Err(invalid(format!("tokens[{i}]: duplicate name {name}")));
            }
            // Compared as bytes, so the same hash in upper and lower case is caught: two entries
            // for one token would give it whichever rights came last.
            if !hashes.insert(hash) {
                return Err(invalid(format!(
                    "tokens[{i}] ({name}): duplicate sha256 (another entry has the same token)"
                )));
            }
            tokens.push(Token {
                hash,
                identity: Identity { name, actions, scope, can_read: e.can_read, can_cancel: e.can_cancel },
            });
        }
        Ok(Self { tokens })
    }

    /// Reads and parses a tokens file, refusing one over `MAX_FILE_BYTES` unread.
    pub fn load(path: &Path, known: &[Action]) -> Result<Self, Error> {
        Self::parse(path, &read_capped(path)?, known)
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
    /// The catalog's actions, which tokens may name.
    known: Vec<Action>,
    tokens: RwLock<Arc<Tokens>>,
    /// The file as last examined (`None`: missing), so an unchanged file is not read again and
    /// a bad one is reported once, not at every check.
    seen: Mutex<Option<Option<Stamp>>>,
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The file did not change since it was last examined.
    Unchanged,
    /// New tokens are in force.
    Loaded(usize),
    /// The file is gone: no token is valid any more (fail closed) until it is back.
    Revoked,
    /// The changed file is unusable; the previous tokens stay in force.
    Refused(Error),
}

fn read_capped(path: &Path) -> Result<String, Error> {
    let read_err = |source| Error::Read { path: path.to_owned(), source };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_FILE_BYTES {
        return Err(Error::TooLarge { path: path.to_owned(), size });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

impl Authenticator {
    /// Authentication off: every caller is `anonymous` with every right.
    pub fn open() -> Self {
        Self { inner: None }
    }

    /// Loads the tokens file; fails on a missing, unreadable, oversized or invalid file.
    pub fn from_file(path: &Path, known: &[Action]) -> Result<Self, Error> {
        let stamp = std::fs::metadata(path).map(|m| Stamp::of(&m)).ok();
        let tokens = Tokens::load(path, known)?;
        Ok(Self {
            inner: Some(Arc::new(Reloading {
                path: path.to_owned(),
                known: known.to_vec(),
                tokens: RwLock::new(Arc::new(tokens)),
                seen: Mutex::new(Some(stamp)),
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

    /// Looks at the file again and applies what changed. Blocking (file I/O and parsing): call
    /// it off the async runtime. A file that did not change (same inode, size and times) is not
    /// read; a deleted one revokes every token; a changed one that is unusable (invalid, over
    /// `MAX_FILE_BYTES`) leaves the previous tokens in force.
    pub fn reload(&self) -> Reload {
        let Some(r) = &self.inner else { return Reload::Unchanged };
        let stamp = match std::fs::metadata(&r.path) {
            Ok(m) => Some(Stamp::of(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Reload::Refused(Error::Read { path: r.path.clone(), source }),
        };
        {
            let Ok(mut seen) = r.seen.lock() else { return Reload::Unchanged };
            if *seen == Some(stamp) {
                return Reload::Unchanged;
            }
            *seen = Some(stamp);
        }
        let tokens = match stamp {
            None => Tokens { tokens: Vec::new() },
            Some(_) => match Tokens::load(&r.path, &r.known) {
                Ok(t) => t,
                Err(e) => return Reload::Refused(e),
            },
        };
        let n = tokens.len();
        if let Ok(mut t) = r.tokens.write() {
            *t = Arc::new(tokens);
        }
        if stamp.is_none() { Reload::Revoked } else { Reload::Loaded(n) }
    }
}

/// The token of an `Authorization` header value: the `Bearer` scheme in any case, then one or
/// more spaces or tabs, then the token (RFC 9110 allows both). The one parser of the service, for
/// `/v1` and `/metrics` alike. `None` for any other form.
pub fn bearer_token(header: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(header).ok()?.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    let token = rest.trim_start_matches([' ', '\t']);
    let valid = scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains([' ', '\t']);
    valid.then_some(token)
}

/// Token buckets by key (an identity, or a client address): `rate` requests a second, bursts up
/// to `burst`. Keys can come from clients (addresses), so the map is bounded: when it is full,
/// buckets that have refilled completely are dropped (they hold nothing a fresh one would not).
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Most buckets kept before refilled ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// `rate` 0 disables the limit.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self { rate: f64::from(rate), burst: f64::from(burst.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    /// False when the limit is off (rate 0).
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one request from the key's bucket; `Err(wait)` when it is empty.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        if !buckets.contains_key(key) {
            if buckets.len() >= MAX_BUCKETS {
                let (rate, burst) = (self.rate, self.burst);
                buckets.retain(|_, (tokens, last)| *tokens + now.duration_since(*last).as_secs_f64() * rate < burst);
                if buckets.len() >= MAX_BUCKETS {
                    // Every bucket is in use: a flood from many addresses. Forget them all rather
                    // than grow without bound.
                    buckets.clear();
                }
            }
            buckets.insert(key.to_owned(), (self.burst, now));
        }
        let Some((tokens, last)) = buckets.get_mut(key) else { return Ok(()) };
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

/// At most `per_second` log lines of one kind a second; the rest are counted and the count is
/// reported with the next line written. A flood of bad requests then costs a few lines, not one
/// per request.
pub struct LogBudget {
    per_second: u32,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogBudget {
    /// A budget of `per_second` lines a second.
    pub fn new(per_second: u32) -> Self {
        Self { per_second, state: Mutex::new((Instant::now(), 0, 0)) }
    }

    /// `Some(suppressed)` when a line may be written now, with how many were left out since the
    /// last one written; `None` when this one must be left out.
    pub fn allow(&self) -> Option<u64> {
        let Ok(mut s) = self.state.lock() else { return Some(0) };
        let (window, used, suppressed) = &mut *s;
        if window.elapsed() >= Duration::from_secs(1) {
            *window = Instant::now();
            *used = 0;
        }
        if *used < self.per_second {
            *used += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
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

    fn known() -> Vec<Action> {
        ["restart_service", "rotate_config", "health_check"].into_iter().map(|n| Action::new(n).unwrap()).collect()
    }

    fn action(name: &str) -> Action {
        Action::new(name).unwrap()
    }

    #[test]
    fn a_token_maps_to_its_identity_and_rights() {
        let t = Tokens::parse(Path::new("t.yaml"), &file("secret-1"), &known()).unwrap();
        let id = t.authenticate("secret-1").unwrap();
        assert_eq!(id.name, "ci-bot");
        assert!(id.may_create(action("health_check")));
        assert!(!id.may_create(action("restart_service")));
        assert!(id.may_read() && !id.may_cancel());
        assert!(t.authenticate("admin-token").unwrap().may_create(action("restart_service")));
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
            let err = Tokens::parse(Path::new("t.yaml"), text, &known()).err().unwrap().to_string();
            assert!(err.contains(why), "{err}");
        }
        let unknown_action = format!("tokens: [{{name: a, sha256: \"{}\", actions: [reboot]}}]", "0".repeat(64));
        assert!(Tokens::parse(Path::new("t.yaml"), &unknown_action, &known()).is_err());
    }

    #[test]
    fn the_same_hash_twice_is_refused_whatever_its_case() {
        let h = hex::encode(Sha256::digest(b"t"));
        let text = format!(
            "tokens:\n  - {{name: a, sha256: \"{h}\", actions: [health_check]}}\n  - {{name: b, sha256: \"{}\", actions: [\"*\"], can_cancel: true}}\n",
            h.to_uppercase()
        );
        let err = Tokens::parse(Path::new("t.yaml"), &text, &known()).err().expect("refused").to_string();
        assert!(err.contains("duplicate sha256"), "{err}");
    }

    #[test]
    fn read_and_cancel_rights_cover_the_scope_which_defaults_to_the_actions() {
        let text = format!(
            "tokens:\n  - {{name: ci, sha256: \"{}\", actions: [health_check], can_read: true}}\n  - {{name: audit, sha256: \"{}\", actions: [], scope: [\"*\"], can_read: true}}\n",
            hex::encode(Sha256::digest(b"ci")),
            hex::encode(Sha256::digest(b"audit"))
        );
        let t = Tokens::parse(Path::new("t.yaml"), &text, &known()).unwrap();
        let ci = t.authenticate("ci").unwrap();
        assert!(ci.in_scope(action("health_check")) && !ci.in_scope(action("restart_service")));
        let audit = t.authenticate("audit").unwrap();
        assert!(audit.in_scope(action("restart_service")) && !audit.may_create(action("restart_service")));
    }

    #[test]
    fn an_emptied_file_revokes_every_token() {
        for text in ["", "  \n", "# nothing here\n", "tokens: []"] {
            assert!(Tokens::parse(Path::new("t.yaml"), text, &known()).expect("valid").is_empty(), "{text:?}");
        }
    }

    #[test]
    fn a_deleted_file_fails_closed_and_a_restored_one_is_loaded_again() {
        let dir = tempfile_dir();
        let path = dir.join("tokens.yaml");
        std::fs::write(&path, file("secret-1")).unwrap();
        let auth = Authenticator::from_file(&path, &known()).unwrap();
        assert!(auth.identify(Some("secret-1")).is_ok());
        assert!(matches!(auth.reload(), Reload::Unchanged));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(auth.reload(), Reload::Revoked));
        assert_eq!(auth.identify(Some("secret-1")), Err(Refusal::Unknown));
        assert!(matches!(auth.reload(), Reload::Unchanged), "reported once");
        std::fs::write(&path, file("secret-1")).unwrap();
        assert!(matches!(auth.reload(), Reload::Loaded(2)));
        assert!(auth.identify(Some("secret-1")).is_ok());
        std::fs::write(&path, "x".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        assert!(matches!(auth.reload(), Reload::Refused(Error::TooLarge { .. })));
        assert!(auth.identify(Some("secret-1")).is_ok(), "previous tokens kept");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ag-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bearer_forms_are_parsed_one_way() {
        for ok in ["Bearer T", "bearer T", "BEARER T", "Bearer  T", "Bearer\tT", " Bearer T "] {
            assert_eq!(bearer_token(ok.as_bytes()), Some("T"), "{ok:?}");
        }
        for bad in ["Bearer", "Bearer ", "Basic T", "T", "Bearer T x", "Bearer\u{0}"] {
            assert_eq!(bearer_token(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn log_budget_lets_a_few_lines_through_and_counts_the_rest() {
        let b = LogBudget::new(3);
        assert_eq!((0..3).filter_map(|_| b.allow()).count(), 3);
        assert_eq!(b.allow(), None);
        assert_eq!(b.allow(), None);
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
