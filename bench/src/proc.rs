//! Databases (a SQLite file in a temporary directory, or a fresh PostgreSQL database) and gateway
//! processes: start, wait for readiness, read RSS, stop with SIGTERM.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::Client;

pub type Result<T> = std::result::Result<T, String>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A fresh database; removed (SQLite directory) or dropped (PostgreSQL) when dropped.
pub struct Db {
    pub url: String,
    dir: Option<PathBuf>,
    pg: Option<(String, String)>,
}

/// `postgres://user@host:port/dbname?opts` with the database name replaced.
fn with_db_name(pg_url: &str, name: &str) -> Result<String> {
    let scheme_end = pg_url.find("://").ok_or_else(|| format!("--pg-url {pg_url:?} is not a URL"))? + 3;
    let (base, query) = match pg_url.find('?') {
        Some(q) => (&pg_url[..q], &pg_url[q..]),
        None => (pg_url, ""),
    };
    let authority_end = base[scheme_end..].find('/').map_or(base.len(), |p| scheme_end + p);
    Ok(format!("{}/{}{}", &base[..authority_end], name, query))
}

fn psql(admin_url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", admin_url, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if !out.status.success() {
        return Err(format!("psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

impl Db {
    pub fn create(backend: Backend, run_dir: &Path, pg_url: &str, tag: &str) -> Result<Db> {
        match backend {
            Backend::Sqlite => {
                let dir = run_dir.join(format!("sqlite-{tag}"));
                std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                let url = format!("sqlite://{}/gw.db?mode=rwc", dir.display());
                Ok(Db { url, dir: Some(dir), pg: None })
            }
            Backend::Postgres => {
                let name = format!("ag_bench_{}_{}", std::process::id(), tag.replace('-', "_"));
                let admin = pg_url.to_string();
                psql(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
                psql(&admin, &format!("CREATE DATABASE {name}"))?;
                let url = with_db_name(pg_url, &name)?;
                Ok(Db { url, dir: None, pg: Some((admin, name)) })
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin, name)) = &self.pg
            && let Err(e) = psql(admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        {
            eprintln!("warning: {e}");
        }
    }
}

/// One gateway process on 127.0.0.1.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    pub workers: u32,
    log: PathBuf,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Gateway {
    /// Spawns the gateway (without waiting for it); `wait_ready` follows.
    pub fn spawn(bin: &Path, db_url: &str, workers: u32, run_dir: &Path, name: &str) -> Result<Gateway> {
        Gateway::spawn_with(bin, db_url, workers, run_dir, name, &[])
    }

    /// `spawn`, with more environment variables.
    pub fn spawn_with(
        bin: &Path,
        db_url: &str,
        workers: u32,
        run_dir: &Path,
        name: &str,
        env: &[(&str, String)],
    ) -> Result<Gateway> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid address");
        let log = run_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GATEWAY_") || k == "LOKI_URL" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("DATABASE_URL", db_url)
            .env("GATEWAY_LISTEN", addr.to_string())
            .env("GATEWAY_WORKERS", workers.to_string())
            .env("GATEWAY_SIM_DURATION_MS", "0")
            .env("GATEWAY_SIM_FAILURE_RATE", "0")
            // The per-identity rate limit is policy, not capacity: the benchmark measures capacity.
            .env("GATEWAY_RATE_LIMIT", "0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let pid = child.id();
        Ok(Gateway { child, addr, pid, workers, log })
    }

    /// Waits (up to 60 s) until `GET /readyz` answers 200.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut client = Client::new(self.addr);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("gateway exited during start ({st}); log:\n{}", log_tail(&self.log)));
            }
            if let Ok(r) = client.request("GET", "/readyz", None).await
                && r.status == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!("gateway not ready within 60 s; log:\n{}", log_tail(&self.log)))
    }

    pub async fn start(bin: &Path, db_url: &str, workers: u32, run_dir: &Path, name: &str) -> Result<Gateway> {
        let mut g = Gateway::spawn(bin, db_url, workers, run_dir, name)?;
        g.wait_ready().await?;
        Ok(g)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        Ok((self.status_kib("VmRSS:")?, self.status_kib("VmHWM:")?))
    }

    /// The resident set split into anonymous memory (heap, stacks) and file-backed pages (the
    /// binary's code and read-only data, shared libraries), in KiB.
    pub fn rss_split_kib(&self) -> Result<(u64, u64)> {
        Ok((self.status_kib("RssAnon:")?, self.status_kib("RssFile:")?))
    }

    /// CPU time the gateway has used so far, all threads, user and system, in ms (kernel
    /// accounting in clock ticks: 10 ms at the usual 100 Hz). Differences of it per job say what
    /// a build costs apart from the rate the machine allowed; on a shared virtual machine it still
    /// moves with the machine's speed (up to 30 % between runs of one binary in runs AF).
    pub fn cpu_ms(&self) -> Result<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("reading CPU time: {e}"))?;
        let ticks = cpu_ticks(&s).ok_or_else(|| format!("no utime/stime in /proc/{}/stat", self.pid))?;
        Ok(ticks as f64 * 1000.0 / clock_ticks_per_sec())
    }

    fn status_kib(&self, name: &str) -> Result<u64> {
        let s =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).map_err(|e| format!("reading RSS: {e}"))?;
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {name} in /proc/{}/status", self.pid))
    }

    /// SIGTERM, then waits up to 30 s for the exit (SIGKILL after that, reported as an error).
    pub async fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => {
                    return Err(format!("gateway exited with {st} after SIGTERM; log:\n{}", log_tail(&self.log)));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(e.to_string()),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err("gateway did not exit within 30 s of SIGTERM (killed)".into())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks. The command name
/// may hold spaces and parentheses: fields count from the last ')', where field 3 starts.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 if it cannot be asked.
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_db_name("postgres://postgres@127.0.0.1:5432/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(with_db_name("postgres://u@h:1", "x").unwrap(), "postgres://u@h:1/x");
        assert_eq!(with_db_name("postgres://u@h/db?sslmode=disable", "x").unwrap(), "postgres://u@h/x?sslmode=disable");
    }

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194304 900 0 0 0 371 29 0 0 20 0 3 0 100 1000 200";
        assert_eq!(cpu_ticks(stat), Some(400));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
    }
}
