//! A local command: argv without a shell, only the environment the catalog lists, in its own
//! process group, which is killed whole on cancel, timeout and shutdown (dropping the run).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::template::{Escape, Template};
use super::{Built, Needs, Recorder, RunError, RunFuture, RunRequest, Runner, settings};

/// What the child gets as PATH unless the catalog sets one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Bytes of stderr quoted in a failed run's error.
const QUOTED: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    argv: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    working_dir: Option<PathBuf>,
    #[serde(default = "default_max")]
    max_output_bytes: usize,
}

fn default_max() -> usize {
    65_536
}

struct Command {
    argv: Vec<Template>,
    env: Vec<(String, Template)>,
    working_dir: Option<PathBuf>,
    max_output: usize,
}

pub(super) fn build(value: Value) -> Result<Built, String> {
    let s: Settings = settings("command", value)?;
    if s.argv.is_empty() || s.argv[0].trim().is_empty() {
        return Err("command.argv: must name a program".into());
    }
    if !(1..=16 * 1024 * 1024).contains(&s.max_output_bytes) {
        return Err("command.max_output_bytes: 1 to 16777216".into());
    }
    let mut needs = Needs::default();
    let argv = s
        .argv
        .iter()
        .enumerate()
        .map(|(i, a)| needs.template(a, &format!("command.argv[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let env = s
        .env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("command.env: '{k}' is not a variable name"));
            }
            Ok((k.clone(), needs.template(v, &format!("command.env.{k}"))?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let runner = Command { argv, env, working_dir: s.working_dir, max_output: s.max_output_bytes };
    Ok(Built { runner: Arc::new(runner), needs: needs.into_inner(), secret_files: Vec::new() })
}

/// Kills the child's whole process group when the run is dropped before the child was reaped:
/// a cancel, a timeout or shutdown (grandchildren included, which `kill_on_drop` would miss).
struct GroupGuard {
    pgid: Option<i32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: killpg only sends a signal; the group id is our child's, created by
            // `process_group(0)`, so no unrelated group is addressed.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// The last `max` bytes of a stream.
async fn keep_tail(mut stream: impl AsyncRead + Unpin, max: usize, out: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut kept) = out.lock() {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > max {
                        let cut = kept.len() - max;
                        kept.drain(..cut);
                    }
                }
            }
        }
    }
}

fn text(bytes: &Mutex<Vec<u8>>) -> String {
    bytes.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

impl Runner for Command {
    fn run<'a>(&'a self, request: &'a RunRequest, _recorder: &'a dyn Recorder) -> RunFuture<'a> {
        Box::pin(async move {
            let id = request.job_id.to_string();
            let vars = request.vars(&id);
            let argv = self
                .argv
                .iter()
                .map(|t| t.render(&vars, Escape::None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(RunError::permanent)?;
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).env_clear().env("PATH", DEFAULT_PATH);
            for (k, t) in &self.env {
                cmd.env(k, t.render(&vars, Escape::None).map_err(RunError::permanent)?);
            }
            if let Some(dir) = &self.working_dir {
                cmd.current_dir(dir);
            }
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
            let mut child =
                cmd.spawn().map_err(|e| RunError::permanent(format!("command: cannot start {}: {e}", argv[0])))?;
            let mut guard = GroupGuard { pgid: child.id().map(|p| p as i32) };
            let (out, err) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
            let mut readers = tokio::task::JoinSet::new();
            if let Some(s) = child.stdout.take() {
                readers.spawn(keep_tail(s, self.max_output, out.clone()));
            }
            if let Some(s) = child.stderr.take() {
                readers.spawn(keep_tail(s, self.max_output, err.clone()));
            }
            let status =
                child.wait().await.map_err(|e| RunError::retryable(format!("command: waiting for it failed: {e}")))?;
            // Reaped: the group id may be reused from now on, so the guard must not signal it.
            guard.pgid = None;
            // A background grandchild may hold the pipes open: read what is there, not until EOF.
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while readers.join_next().await.is_some() {}
            })
            .await;
            readers.abort_all();
            let (stdout, stderr) = (text(&out), text(&err));
            match status.code() {
                Some(0) => Ok(json!({"exit_code": 0, "stdout": stdout, "stderr": stderr})),
                Some(code) => {
                    let quoted = super::remote::tail(&stderr, usize::MAX, QUOTED);
                    Err(RunError::retryable(format!("command exited with status {code}: {}", quoted.trim())))
                }
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    Err(RunError::retryable(format!("command killed by signal {}", status.signal().unwrap_or(0))))
                }
            }
        })
    }
}
