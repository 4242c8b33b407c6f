//! The real binary as separate processes: crashes (SIGKILL), lease recovery by per-action
//! policy, two replicas sharing one PostgreSQL database, and a database outage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::both_backends;
use crate::helpers::*;

async fn get(addr: &str, id: Uuid) -> Value {
    reqwest::get(format!("{addr}/v1/jobs/{id}")).await.unwrap().json().await.unwrap()
}

async fn wait_status(addr: &str, id: Uuid, wanted: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let job = get(addr, id).await;
        if wanted.iter().any(|w| job["status"] == *w) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not reach {wanted:?}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(addr: &str, action: &str, ms: u64) -> Uuid {
    let ids = post_many(&http_client(), addr, vec![job_body(action, ms, false)], 1).await;
    ids[0]
}

async fn wait_all_terminal(db_url: &str, total: i64, within: Duration) -> std::collections::BTreeMap<String, i64> {
    let deadline = Instant::now() + within;
    loop {
        let counts = status_counts(db_url).await;
        let open = counts.get("PENDING").copied().unwrap_or(0) + counts.get("RUNNING").copied().unwrap_or(0);
        let all: i64 = counts.values().sum();
        if open == 0 {
            assert_eq!(all, total, "every accepted job is stored: {counts:?}");
            return counts;
        }
        assert!(Instant::now() < deadline, "jobs still open: {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

both_backends!(a_dead_workers_jobs_are_recovered_by_their_action_policy);
async fn a_dead_workers_jobs_are_recovered_by_their_action_policy(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [("GATEWAY_LEASE_SECS", "2")];
    let mut a = Gateway::start(&db.url, &env).await;
    let restart = create(&a.addr, "restart_service", 60_000).await;
    let check = create(&a.addr, "health_check", 1_000).await;
    wait_status(&a.addr, restart, &["RUNNING"], Duration::from_secs(5)).await;
    wait_status(&a.addr, check, &["RUNNING"], Duration::from_secs(5)).await;

    a.kill();
    let b = Gateway::start(&db.url, &env).await;
    let failed = wait_status(&b.addr, restart, &["FAILED", "SUCCESS"], Duration::from_secs(20)).await;
    let retried = wait_status(&b.addr, check, &["SUCCESS", "FAILED"], Duration::from_secs(20)).await;
    let metrics = parse_prometheus(&reqwest::get(format!("{}/metrics", b.addr)).await.unwrap().text().await.unwrap());

    assert_eq!(failed["status"], "FAILED", "restart_service is not run twice: {failed}");
    assert!(failed["error"].as_str().unwrap().contains("worker lost"), "{failed}");
    assert_eq!(retried["status"], "SUCCESS", "health_check is retried: {retried}");
    assert_eq!(retried["attempts"], 2);
    assert!(!b.executions().contains(&restart.to_string()), "restart_service executed again");
    assert!(b.executions().contains(&check.to_string()), "health_check executed again");
    assert_eq!(value(&metrics, "automation_job_leases_lost_total", &[("action", "restart_service")]), Some(1.0));
    assert_eq!(value(&metrics, "automation_job_leases_lost_total", &[("action", "health_check")]), Some(1.0));
}

both_backends!(a_gateway_killed_mid_run_loses_no_accepted_job);
async fn a_gateway_killed_mid_run_loses_no_accepted_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    // 300 jobs on 8 workers at 60-120 ms take about 3.4 s, so the kill lands mid-run even when the
    // posts are slow (at 10-40 ms a loaded CI machine saw every job done before the kill).
    let env = [("GATEWAY_LEASE_SECS", "2"), ("GATEWAY_WORKERS", "8"), ("GATEWAY_SIM_DURATION_MS", "60-120")];
    let mut a = Gateway::start(&db.url, &env).await;
    let client = http_client();
    let bodies: Vec<Value> = (0..300)
        .map(|i| {
            let mut b = job_body(["health_check", "rotate_config", "restart_service"][i % 3], 0, false);
            b["parameters"] = serde_json::json!({});
            b
        })
        .collect();
    let ids = post_many(&client, &a.addr, bodies, 16).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    a.kill();
    let counts_at_kill = status_counts(&db.url).await;
    let b = Gateway::start(&db.url, &env).await;
    let counts = wait_all_terminal(&db.url, ids.len() as i64, Duration::from_secs(60)).await;

    println!("at kill: {counts_at_kill:?}; after recovery: {counts:?}");
    assert!(counts_at_kill.get("PENDING").copied().unwrap_or(0) > 0, "the kill landed mid-run: {counts_at_kill:?}");
    for id in ids.iter().take(20) {
        let job = get(&b.addr, *id).await;
        assert!(["SUCCESS", "FAILED"].contains(&job["status"].as_str().unwrap()), "{job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_execute_each_job_exactly_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let env = [("GATEWAY_WORKERS", "16"), ("GATEWAY_SIM_DURATION_MS", "0")];
    let a = Gateway::start(&db.url, &env).await;
    let b = Gateway::start(&db.url, &env).await;
    let client = http_client();
    let bodies = |n: usize| -> Vec<Value> { (0..n).map(|_| job_body("health_check", 0, false)).collect() };

    let (ia, ib) =
        tokio::join!(post_many(&client, &a.addr, bodies(1000), 16), post_many(&client, &b.addr, bodies(1000), 16));
    let counts = wait_all_terminal(&db.url, 2000, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut executions: HashMap<String, usize> = HashMap::new();
    for id in a.executions().into_iter().chain(b.executions()) {
        *executions.entry(id).or_default() += 1;
    }
    assert_eq!(counts.get("SUCCESS"), Some(&2000), "{counts:?}");
    assert_eq!(ia.len() + ib.len(), 2000);
    assert_eq!(executions.len(), 2000, "every job executed");
    let twice: Vec<_> = executions.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "{} jobs executed more than once, e.g. {:?}", twice.len(), &twice[..twice.len().min(5)]);
    assert!(!a.executions().is_empty() && !b.executions().is_empty(), "both replicas did work");
}

/// A PostgreSQL cluster of the test's own (initdb + pg_ctl in a temp dir, a free port), so
/// stopping it never touches the shared server.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn as_postgres(bin: &std::path::Path, tool: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(tool);
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} as postgres: {e}", exe.display()));
    assert!(out.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

impl PgCluster {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().expect("chown");
        assert!(status.success());
        let data = dir.path().join("data");
        as_postgres(&bin, "initdb", &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        let c = Self { dir, bin, port: free_port() };
        c.up();
        c
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn up(&self) {
        let data = self.dir.path().join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("log");
        as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"],
        );
    }

    pub fn down(&self) {
        let data = self.dir.path().join("data");
        as_postgres(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_with_retry_after_and_recovers() {
    let pg = PgCluster::start();
    let gw = Gateway::start(&pg.url(), &[("GATEWAY_SIM_DURATION_MS", "5")]).await;
    let client = http_client_builder().timeout(Duration::from_secs(20)).build().unwrap();
    let before = create(&gw.addr, "health_check", 5).await;
    wait_status(&gw.addr, before, &["SUCCESS"], Duration::from_secs(10)).await;

    pg.down();
    let t = Instant::now();
    let post =
        client.post(format!("{}/v1/jobs", gw.addr)).json(&job_body("health_check", 5, false)).send().await.unwrap();
    let post_took = t.elapsed();
    let post_status = post.status();
    let retry_after = post.headers().get("retry-after").cloned();
    let post_body: Value = post.json().await.unwrap();
    let read = client.get(format!("{}/v1/jobs/{before}", gw.addr)).send().await.unwrap();
    let ready = client.get(format!("{}/readyz", gw.addr)).send().await.unwrap();
    let live = client.get(format!("{}/healthz", gw.addr)).send().await.unwrap();
    pg.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let r =
            client.post(format!("{}/v1/jobs", gw.addr)).json(&job_body("health_check", 5, false)).send().await.unwrap();
        if r.status() == 202 {
            break r.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().parse::<Uuid>().unwrap();
        }
        assert_eq!(r.status(), 503, "only retryable answers while recovering");
        assert!(Instant::now() < deadline, "the gateway did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    assert_eq!(post_status, 503, "{post_body}");
    assert!(retry_after.is_some());
    assert_eq!(post_body["status"], 503);
    assert!(post_took < Duration::from_secs(10), "answered, did not hang: {post_took:?}");
    assert_eq!(read.status(), 503);
    assert_eq!(read.headers()["content-type"], "application/problem+json");
    assert_eq!(ready.status(), 503);
    assert_eq!(live.status(), 200, "liveness does not depend on the database");
    wait_status(&gw.addr, after, &["SUCCESS"], Duration::from_secs(20)).await;
}
