//! The test harness: the real app on a random port over real HTTP, on a SQLite file in a temp
//! dir or on a fresh PostgreSQL database (created here, dropped when the test ends), plus the
//! real binary as a child process for crash and multi-replica tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automation_gateway::executor::ActionCatalog;
use automation_gateway::{App, Config};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::oneshot;
use uuid::Uuid;

/// Where the PostgreSQL server for tests is (any database on it; tests create their own).
pub fn pg_admin_url() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Arc<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/gw.db?mode=rwc", dir.path().display());
                Arc::new(Self { url, _dir: Some(dir), pg_name: None })
            }
            Backend::Postgres => {
                let name = format!("ag_test_{}", Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL tests need a server at {} (set TEST_PG_URL): {e}", pg_admin_url())
                });
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                let mut url = url::Url::parse(&pg_admin_url()).expect("TEST_PG_URL");
                url.set_path(&name);
                Arc::new(Self { url: url.to_string(), _dir: None, pg_name: Some(name) })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside async context; a small runtime of its own does the cleanup.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.ok()?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&mut conn)
                        .await
                        .ok()
                })
            })
            .join();
        }
    }
}

/// Settings every in-process test starts from: fast, deterministic, small.
pub fn test_config(db: &TestDb) -> Config {
    let mut c = Config::for_database(&db.url).expect("config");
    c.http.listen = "127.0.0.1:0".parse().expect("addr");
    c.executor.sim_duration_ms = "1-5".parse().expect("sim");
    c.executor.sim_failure_rate = 0.0;
    c.executor.workers = 8;
    c.executor.poll_interval_ms = 100;
    c.executor.lease_secs = 5;
    c.executor.shutdown_grace_secs = 5;
    c.telemetry.log = "warn".into();
    c
}

/// The app, in-process, on a random port.
pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    /// Kept so the database outlives the app.
    _db: Arc<TestDb>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(TestDb::new(backend).await, |_| {}).await
    }

    pub async fn spawn_with(db: Arc<TestDb>, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_with_catalog(db, tweak, |_, c| c).await
    }

    /// `spawn_with`, the built-in catalog passed through `catalog` first.
    pub async fn spawn_with_catalog(
        db: Arc<TestDb>,
        tweak: impl FnOnce(&mut Config),
        catalog: impl FnOnce(&Config, ActionCatalog) -> ActionCatalog,
    ) -> Self {
        let mut config = test_config(&db);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let built_in = App::built_in_catalog(&config).expect("catalog");
        let catalog = catalog(&config, built_in);
        let app = App::build_with(config, catalog).await.expect("app builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("app runs");
        });
        let client = http_client_builder().timeout(Duration::from_secs(30)).build().expect("client");
        Self { addr, client, _db: db, stop: Some(stop), handle: Some(handle) }
    }

    /// Graceful shutdown, as on SIGTERM; returns once the app has stopped.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(60), h).await.expect("shutdown within 60 s").expect("app task");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    pub async fn post_job(&self, body: &Value) -> reqwest::Response {
        self.client.post(self.url("/v1/jobs")).json(body).send().await.expect("POST /v1/jobs")
    }

    /// Creates a job and returns its id.
    pub async fn create(&self, action: &str, duration_ms: u64, fail: bool) -> Uuid {
        let resp = self.post_job(&job_body(action, duration_ms, fail)).await;
        assert_eq!(resp.status(), 202, "create job");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["status"], "PENDING");
        body["job_id"].as_str().and_then(|s| s.parse().ok()).expect("job_id is a UUID")
    }

    pub async fn get_job(&self, id: Uuid) -> Value {
        let resp = self.client.get(self.url(&format!("/v1/jobs/{id}"))).send().await.expect("GET job");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("json")
    }

    /// Polls until the job's status is one of `wanted`.
    pub async fn wait_for(&self, id: Uuid, wanted: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.get_job(id).await;
            if wanted.iter().any(|w| job["status"] == *w) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not reach {wanted:?} in {within:?}: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> Vec<Sample> {
        let resp = self.client.get(self.url("/metrics")).send().await.expect("GET /metrics");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap_or_default().to_owned();
        assert!(ct.starts_with("text/plain"), "metrics content type {ct}");
        parse_prometheus(&resp.text().await.expect("text"))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn job_body(action: &str, duration_ms: u64, fail: bool) -> Value {
    json!({
        "action": action,
        "target": "demo-api",
        "requested_by": "tests@example.com",
        "parameters": {"service": "demo-api", "simulate": {"duration_ms": duration_ms, "fail": fail}}
    })
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A strict-enough parser of the text exposition format: every non-comment line must parse.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The value of one series, by name and exact labels.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// The real binary, as a child process with its JSON log captured.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
    db_url: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Gateway {
    pub async fn start(db_url: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_automation-gateway"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEWAY_SIM_FAILURE_RATE", "0")
            .env("GATEWAY_POLL_INTERVAL_MS", "100")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start gateway binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let addr = format!("http://127.0.0.1:{port}");
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{addr}/readyz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, addr, log, db_url: db_url.to_owned() }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit (bounded).
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // What it was doing: its last log lines, and on PostgreSQL what its sessions wait for.
        let tail = self.log.lock().map(|l| l[l.len().saturating_sub(120)..].join("\n")).unwrap_or_default();
        let sessions = if self.db_url.starts_with("postgres") {
            Command::new("psql")
                .args([
                    &self.db_url,
                    "-Atc",
                    "SELECT pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 300) \
                     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("psql failed: {e}"))
        } else {
            String::new()
        };
        panic!(
            "gateway did not exit within 60 s of SIGTERM; its last log lines:\n{tail}\ndatabase sessions:\n{sessions}"
        );
    }

    /// Job ids of every attempt this process started, from its log.
    pub fn executions(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| {
                l.iter()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .filter(|v| v["message"] == "job attempt started")
                    .filter_map(|v| v["job_id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Status counts straight from the database.
pub async fn status_counts(db_url: &str) -> BTreeMap<String, i64> {
    use sqlx::Row;
    let rows = if db_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(db_url).await.expect("connect");
        sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
            .fetch_all(&mut c)
            .await
            .expect("count")
            .into_iter()
            .map(|r| (r.get::<String, _>("status"), r.get::<i64, _>("n")))
            .collect::<Vec<_>>()
    } else {
        let mut c = sqlx::SqliteConnection::connect(db_url).await.expect("connect");
        sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
            .fetch_all(&mut c)
            .await
            .expect("count")
            .into_iter()
            .map(|r| (r.get::<String, _>("status"), r.get::<i64, _>("n")))
            .collect::<Vec<_>>()
    };
    rows.into_iter().collect()
}

/// Posts `n` jobs concurrently (bounded) and returns their ids.
pub async fn post_many(client: &reqwest::Client, addr: &str, bodies: Vec<Value>, concurrency: usize) -> Vec<Uuid> {
    use futures_util::StreamExt;
    futures_util::stream::iter(bodies)
        .map(|b| {
            let client = client.clone();
            let url = format!("{addr}/v1/jobs");
            async move {
                for _ in 0..50 {
                    match client.post(&url).json(&b).send().await {
                        Ok(r) if r.status() == 202 => {
                            let v: Value = r.json().await.expect("json");
                            return v["job_id"].as_str().and_then(|s| s.parse::<Uuid>().ok()).expect("uuid");
                        }
                        Ok(r) if r.status() == 503 || r.status() == 429 => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(e) => panic!("request failed: {e}"),
                    }
                }
                panic!("job not accepted after retries")
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// An HTTP client for the tests; the gateway's TLS provider is installed first (reqwest is built
/// without one of its own).
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("client")
}

pub fn http_client_builder() -> reqwest::ClientBuilder {
    automation_gateway::install_tls_provider();
    reqwest::Client::builder()
}
