//! Fault tolerance across replicas on one PostgreSQL database: a replica killed mid-run,
//! PostgreSQL restarted mid-run, and a rolling restart under load.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::process::PgCluster;

const ACTIONS: [&str; 3] = ["restart_service", "rotate_config", "health_check"];

fn mixed_body(i: usize) -> Value {
    json!({"action": ACTIONS[i % 3], "target": format!("svc-{}", i % 50), "requested_by": "replicas@example.com"})
}

/// What the clients saw.
#[derive(Default)]
struct Outcomes {
    /// Distinct job ids acknowledged with 202.
    accepted: HashSet<String>,
    /// 503/429 answers (retried).
    retryable: usize,
    /// Connection errors, by replica (retried on another replica with the same Idempotency-Key).
    transport: Vec<String>,
    /// Anything else: never acceptable.
    failures: Vec<String>,
}
/// A stand-in for a load balancer: sends to replicas whose `/readyz` answers 200, round-robin.
struct Router {
    replicas: Mutex<Vec<(String, Arc<AtomicBool>)>>,
    next: AtomicUsize,
    stop: AtomicBool,
    /// Clients send no new job once this is set.
    halt: AtomicBool,
}

impl Router {
    fn new(addrs: &[String]) -> Arc<Self> {
        let replicas = addrs.iter().map(|a| (a.clone(), Arc::new(AtomicBool::new(true)))).collect();
        Arc::new(Self {
            replicas: Mutex::new(replicas),
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            halt: AtomicBool::new(false),
        })
    }

    fn set(&self, i: usize, addr: String) {
        self.replicas.lock().unwrap()[i] = (addr, Arc::new(AtomicBool::new(false)));
    }

    fn pick(&self) -> Option<String> {
        let r = self.replicas.lock().unwrap();
        for _ in 0..r.len() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % r.len();
            if r[i].1.load(Ordering::Relaxed) {
                return Some(r[i].0.clone());
            }
        }
        None
    }

    /// Health-checks every replica every 50 ms, like an endpoints controller.
    fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let client = http_client_builder().timeout(Duration::from_millis(500)).build().unwrap();
            while !me.stop.load(Ordering::Relaxed) {
                let list = me.replicas.lock().unwrap().clone();
                for (addr, ready) in list {
                    let ok = matches!(client.get(format!("{addr}/readyz")).send().await, Ok(r) if r.status() == 200);
                    ready.store(ok, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

/// `clients` concurrent clients send `total` jobs through the router, recording every answer.
/// Each job carries an `Idempotency-Key`, so a client that loses a connection mid-request can
/// safely send it again to another replica: the job is created once either way.
async fn drive(router: Arc<Router>, total: usize, clients: usize, out: Arc<Mutex<Outcomes>>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let run = format!("{}", uuid::Uuid::new_v4().simple());
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (router, out, sent, run) = (router.clone(), out.clone(), sent.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let client = http_client_builder().timeout(Duration::from_secs(15)).build().unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let i = sent.fetch_add(1, Ordering::Relaxed);
                if i >= total || router.halt.load(Ordering::Relaxed) {
                    return;
                }
                let body = mixed_body(i);
                let key = format!("{run}-{i}");
                loop {
                    assert!(Instant::now() < deadline, "load did not finish in time");
                    let Some(addr) = router.pick() else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let answer =
                        client.post(format!("{addr}/v1/jobs")).header("Idempotency-Key", &key).json(&body).send().await;
                    match answer {
                        Ok(r) if r.status() == 202 => {
                            let v: Value = r.json().await.unwrap();
                            out.lock().unwrap().accepted.insert(v["job_id"].as_str().unwrap().to_owned());
                            break;
                        }
                        Ok(r) if r.status() == 503 || r.status() == 429 => {
                            assert!(r.headers().contains_key("retry-after"), "503/429 without Retry-After");
                            out.lock().unwrap().retryable += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok(r) => {
                            let s = r.status();
                            let text = r.text().await.unwrap_or_default();
                            out.lock().unwrap().failures.push(format!("{addr}: {s} {text}"));
                            break;
                        }
                        Err(e) => {
                            out.lock().unwrap().transport.push(format!("{addr}: {e}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

async fn wait_all_terminal(db_url: &str, within: Duration) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + within;
    loop {
        let c = status_counts(db_url).await;
        if c.get("PENDING").copied().unwrap_or(0) + c.get("RUNNING").copied().unwrap_or(0) == 0 {
            return c;
        }
        assert!(Instant::now() < deadline, "jobs still open: {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn running_ids(db_url: &str) -> HashSet<String> {
    use sqlx::{Connection, Row};
    let mut c = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE status = 'RUNNING'")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get::<uuid::Uuid, _>("id").to_string())
        .collect()
}

/// Executions per job across every replica's log (including the dead ones').
fn executions(gws: &[&Gateway]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for g in gws {
        for id in g.executions() {
            *n.entry(id).or_default() += 1;
        }
    }
    n
}

async fn action_of(db_url: &str) -> HashMap<String, String> {
    use sqlx::{Connection, Row};
    let mut c = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query("SELECT id, action FROM jobs")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get::<uuid::Uuid, _>("id").to_string(), r.get::<String, _>("action")))
        .collect()
}

async fn failed_by_error(db_url: &str) -> Vec<(String, i64)> {
    use sqlx::{Connection, Row};
    let mut c = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query("SELECT COALESCE(error, '') AS e, COUNT(*) AS n FROM jobs WHERE status = 'FAILED' GROUP BY 1")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get::<String, _>("e"), r.get::<i64, _>("n")))
        .collect()
}

fn no_fail_on_loss_job_ran_twice(execs: &HashMap<String, usize>, actions: &HashMap<String, String>) {
    let twice: Vec<_> = execs
        .iter()
        .filter(|(id, n)| **n > 1 && actions.get(*id).map(String::as_str) != Some("health_check"))
        .collect();
    assert!(
        twice.is_empty(),
        "{} fail-on-loss jobs executed twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

const ENV: [(&str, &str); 4] = [
    ("GATEWAY_LEASE_SECS", "2"),
    ("GATEWAY_WORKERS", "16"),
    ("GATEWAY_SIM_DURATION_MS", "5-40"),
    ("GATEWAY_SHUTDOWN_DELAY_MS", "1000"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_run_loses_nothing_and_runs_no_fail_on_loss_job_twice() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut gws =
        [Gateway::start(&db.url, &ENV).await, Gateway::start(&db.url, &ENV).await, Gateway::start(&db.url, &ENV).await];
    let router = Router::new(&gws.iter().map(|g| g.addr.clone()).collect::<Vec<_>>());
    let watch = router.watch();
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let load = tokio::spawn(drive(router.clone(), 5000, 16, out.clone()));

    // Kill one replica once a good part of the work is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.lock().unwrap().accepted.len() < 1500 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running_at_kill = running_ids(&db.url).await;
    gws[0].kill();
    let killed_at = Instant::now();
    load.await.unwrap();
    // Every job running at the kill is settled within the lease plus one recovery round.
    loop {
        let still: Vec<_> = running_ids(&db.url).await.intersection(&running_at_kill).cloned().collect();
        if still.is_empty() {
            break;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(8), "recovery slower than the lease: {still:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = wait_all_terminal(&db.url, Duration::from_secs(120)).await;
    router.stop.store(true, Ordering::Relaxed);
    watch.await.unwrap();

    let out = std::mem::take(&mut *out.lock().unwrap());
    let execs = executions(&gws.iter().collect::<Vec<_>>());
    println!("killed replica; counts {counts:?}; running at kill {}", running_at_kill.len());
    let actions = action_of(&db.url).await;
    assert_eq!(out.accepted.len(), 5000, "every job acknowledged once");
    assert_eq!(counts.values().sum::<i64>(), 5000, "every job stored once");
    assert!(out.accepted.iter().all(|id| actions.contains_key(id)), "every acknowledged job is stored");
    assert!(!running_at_kill.is_empty(), "the kill landed mid-run");
    no_fail_on_loss_job_ran_twice(&execs, &actions);
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    // Connections to the dead replica fail until the router notices; nothing else may.
    assert!(out.transport.iter().all(|f| f.starts_with(&gws[0].addr)), "{:?}", out.transport);
    println!("failed jobs by error: {:?}", failed_by_error(&db.url).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_answers_503_and_every_replica_recovers() {
    let pg = PgCluster::start();
    let url = pg.url();
    let gws = [Gateway::start(&url, &ENV).await, Gateway::start(&url, &ENV).await, Gateway::start(&url, &ENV).await];
    let addrs: Vec<String> = gws.iter().map(|g| g.addr.clone()).collect();
    // No readiness routing here: clients keep sending to every replica during the outage. The
    // load runs until halted, so the outage always lands in the middle of it.
    let router = Router::new(&addrs);
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let load = tokio::spawn(drive(router.clone(), 1_000_000, 12, out.clone()));
    let accepted = |n: usize| {
        let out = out.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while out.lock().unwrap().accepted.len() < n {
                assert!(Instant::now() < deadline, "load stalled below {n} accepted jobs");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    accepted(500).await;
    pg.down();
    // Longer than the pool's wait for a connection (5 s): a shorter outage is absorbed, the
    // requests waiting for a connection succeed once PostgreSQL is back. A 503 within 2 s was
    // only seen when a statement happened to be in flight at the moment of the crash.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = out.lock().unwrap().retryable;
    pg.up();
    let before_up = out.lock().unwrap().accepted.len();
    accepted(before_up + 500).await;
    router.halt.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let total = out.lock().unwrap().accepted.len() as i64;
    let counts = wait_all_terminal(&url, Duration::from_secs(120)).await;
    let client = http_client();
    for a in &addrs {
        let r = client.get(format!("{a}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{a} recovered by itself");
    }

    let out = std::mem::take(&mut *out.lock().unwrap());
    println!("postgres restart: {counts:?}, retryable answers {} ({during} during the outage)", out.retryable);
    assert!(during > 0, "the outage was seen as 503s");
    assert!(out.failures.is_empty(), "only retryable answers: {:?}", out.failures);
    assert!(out.transport.is_empty(), "no connection failed: {:?}", out.transport);
    assert_eq!(
        counts.values().sum::<i64>(),
        total,
        "every acknowledged job stored once: nothing lost, nothing half-written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_job_and_fails_no_request() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut gws = vec![
        Gateway::start(&db.url, &ENV).await,
        Gateway::start(&db.url, &ENV).await,
        Gateway::start(&db.url, &ENV).await,
    ];
    let router = Router::new(&gws.iter().map(|g| g.addr.clone()).collect::<Vec<_>>());
    let watch = router.watch();
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let load = tokio::spawn(drive(router.clone(), 4000, 12, out.clone()));
    let mut old = Vec::new();

    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut g = gws.remove(i);
        g.terminate();
        let fresh = Gateway::start(&db.url, &ENV).await;
        router.set(i, fresh.addr.clone());
        gws.insert(i, fresh);
        old.push(g);
    }
    load.await.unwrap();
    let counts = wait_all_terminal(&db.url, Duration::from_secs(120)).await;
    router.stop.store(true, Ordering::Relaxed);
    watch.await.unwrap();

    let out = std::mem::take(&mut *out.lock().unwrap());
    let mut all: Vec<&Gateway> = gws.iter().collect();
    all.extend(old.iter());
    println!("rolling restart: {counts:?}, retryable answers {}", out.retryable);
    assert!(out.failures.is_empty(), "requests failed: {:?}", out.failures);
    assert!(out.transport.is_empty(), "connections failed: {:?}", out.transport);
    assert_eq!(out.accepted.len(), 4000);
    assert_eq!(counts.values().sum::<i64>(), 4000);
    no_fail_on_loss_job_ran_twice(&executions(&all), &action_of(&db.url).await);
}

/// A claim that committed while its answer was lost (the connection broke at COMMIT, as when
/// PostgreSQL restarts: CI saw three jobs stay RUNNING for good after the restart test) leaves a
/// row RUNNING under a live replica that is not running it. The replica's heartbeat must not
/// renew that lease for ever: recovery settles the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_is_settled_by_recovery() {
    use sqlx::{Connection, Row};
    let db = TestDb::new(Backend::Postgres).await;
    let gw = Gateway::start(&db.url, &ENV).await;
    let client = http_client();
    let mut c = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let status = |id: uuid::Uuid| {
        let url = db.url.clone();
        async move {
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            sqlx::query("SELECT status FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&mut c)
                .await
                .expect("job row")
                .get::<String, _>("status")
        }
    };

    // The replica's owner id, read from a job it is running.
    let long = post_many(&client, &gw.addr, vec![job_body("health_check", 3000, false)], 1).await[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    let owner: uuid::Uuid = loop {
        let row = sqlx::query("SELECT lease_owner FROM jobs WHERE id = $1 AND status = 'RUNNING'")
            .bind(long)
            .fetch_optional(&mut c)
            .await
            .expect("select");
        if let Some(owner) = row.and_then(|r| r.get::<Option<uuid::Uuid>, _>("lease_owner")) {
            break owner;
        }
        assert!(Instant::now() < deadline, "the long job never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // A finished job put back the way a lost claim leaves it: RUNNING, leased to this replica.
    let lost = post_many(&client, &gw.addr, vec![job_body("health_check", 1, false)], 1).await[0];
    while status(lost).await != "SUCCESS" {
        assert!(Instant::now() < deadline, "the short job never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease_until = chrono::Utc::now().timestamp_micros() + 2_000_000;
    sqlx::query(
        "UPDATE jobs SET status = 'RUNNING', lease_owner = $1, lease_until = $2, finished_at = NULL WHERE id = $3",
    )
    .bind(owner)
    .bind(lease_until)
    .bind(lost)
    .execute(&mut c)
    .await
    .expect("update");
    let made = Instant::now();

    // Settled within the 2 s lease, two heartbeats and a recovery round (the lost-job policy of
    // health_check retries it, so it runs again and ends).
    let last = loop {
        let s = status(lost).await;
        if s == "SUCCESS" || s == "FAILED" {
            break s;
        }
        assert!(
            made.elapsed() < Duration::from_secs(15),
            "a lost claim is still {s} after 15 s: its lease is renewed for ever"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("lost claim settled as {last} after {:?}", made.elapsed());
    let logs = gw.log.lock().unwrap().join("\n");
    assert!(logs.contains("not running here"), "the release is logged");
}
