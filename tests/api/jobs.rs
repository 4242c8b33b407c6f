//! The job lifecycle, listing, cancel, idempotency, retries, timeouts, metrics, shutdown.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::both_backends;
use automation_gateway::executor::ActionCatalog;

use crate::helpers::*;

both_backends!(health_readiness_and_docs_answer);
async fn health_readiness_and_docs_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let health: Value = app.client.get(app.url("/healthz")).send().await.unwrap().json().await.unwrap();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    let spec = app.client.get(app.url("/openapi.json")).send().await.unwrap();

    assert_eq!(health, json!({"status": "ok"}));
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    assert_eq!(spec.json::<Value>().await.unwrap()["paths"]["/v1/jobs"]["post"]["operationId"], "jobs.create");
    app.stop().await;
}

both_backends!(a_fourth_action_is_one_catalog_entry);
/// Adding an action takes one catalog entry: it is accepted, run, listed, counted in metrics,
/// described in the OpenAPI document and named in the unknown-action answer, with no other edit.
async fn a_fourth_action_is_one_catalog_entry(backend: Backend) {
    use automation_gateway::executor::ActionEntry;
    use automation_gateway::jobs::Action;

    let app = TestApp::spawn_with_catalog(
        TestDb::new(backend).await,
        |_| {},
        |_, built_in| {
            let mut entries = built_in.entries().to_vec();
            let template = entries[2].clone();
            entries.push(ActionEntry {
                action: Action::new("flush_cache").unwrap(),
                description: "Flush a cache.".into(),
                ..template
            });
            ActionCatalog::new(entries).unwrap()
        },
    )
    .await;
    let id = app.create("flush_cache", 1, false).await;
    let job = app.wait_for(id, &["SUCCESS"], Duration::from_secs(10)).await;
    assert_eq!(job["action"], "flush_cache");
    let listed: Value =
        app.client.get(app.url("/v1/jobs?action=flush_cache")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");
    let samples = app.metrics().await;
    assert_eq!(
        value(&samples, "automation_jobs_total", &[("action", "flush_cache"), ("status", "SUCCESS")]),
        Some(1.0)
    );
    assert_eq!(value(&samples, "automation_jobs_total", &[("action", "flush_cache"), ("status", "FAILED")]), Some(0.0));
    let spec = app.client.get(app.url("/openapi.json")).send().await.unwrap().text().await.unwrap();
    assert!(spec.contains("`flush_cache`"), "the OpenAPI document lists the new action");
    let unknown: Value =
        app.post_job(&json!({"action": "nope", "target": "x", "requested_by": "me"})).await.json().await.unwrap();
    assert_eq!(
        unknown["supported_actions"],
        json!(["restart_service", "rotate_config", "health_check", "flush_cache"])
    );
    app.stop().await;
}

both_backends!(a_job_goes_pending_running_success);
async fn a_job_goes_pending_running_success(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let resp = app.post_job(&job_body("restart_service", 400, false)).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let id: Uuid = body["job_id"].as_str().unwrap().parse().unwrap();
    let created = app.get_job(id).await;
    let running = app.wait_for(id, &["RUNNING"], Duration::from_secs(5)).await;
    let done = app.wait_for(id, &["SUCCESS"], Duration::from_secs(10)).await;

    assert_eq!(body["status"], "PENDING");
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert!(created["status"] == "PENDING" || created["status"] == "RUNNING");
    for key in ["job_id", "action", "target", "status", "started_at", "finished_at", "error"] {
        assert!(created.get(key).is_some(), "key {key} missing from {created}");
    }
    assert_eq!(created["finished_at"], Value::Null);
    assert!(running["started_at"].is_string());
    assert_eq!(done["action"], "restart_service");
    assert_eq!(done["target"], "demo-api");
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["requested_by"], "tests@example.com");
    assert!(done["finished_at"].as_str().unwrap().ends_with('Z'));
    assert!(done["result"]["message"].is_string());
    app.stop().await;
}

both_backends!(a_failing_job_ends_failed_with_its_error);
async fn a_failing_job_ends_failed_with_its_error(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app =
        TestApp::spawn_with(db, |c| c.executor.action_policy = "rotate_config.max_attempts=1".parse().unwrap()).await;

    let id = app.create("rotate_config", 5, true).await;
    let job = app.wait_for(id, &["FAILED"], Duration::from_secs(10)).await;

    assert!(job["error"].as_str().unwrap().contains("simulated failure"), "{job}");
    assert!(job["finished_at"].is_string());
    assert_eq!(job["attempts"], 1);
    app.stop().await;
}

both_backends!(list_filters_and_pages_newest_first);
async fn list_filters_and_pages_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let action = if i % 2 == 0 { "health_check" } else { "rotate_config" };
        ids.push(app.create(action, 1, false).await);
    }
    for id in &ids {
        app.wait_for(*id, &["SUCCESS"], Duration::from_secs(10)).await;
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = app.url("/v1/jobs?action=health_check&status=SUCCESS&limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app.client.get(url).send().await.unwrap().json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["action"], "health_check");
            seen.push(item["job_id"].as_str().unwrap().parse::<Uuid>().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let by_target: Value =
        app.client.get(app.url("/v1/jobs?target=nothing-here")).send().await.unwrap().json().await.unwrap();

    let expected: Vec<Uuid> = ids.iter().step_by(2).rev().copied().collect();
    assert_eq!(seen, expected, "health_check jobs, newest first, across pages");
    assert_eq!(by_target["items"], json!([]));
    assert_eq!(by_target["next_cursor"], Value::Null);
    app.stop().await;
}

both_backends!(concurrent_reads_each_get_their_own_job);
/// Reads are batched inside the store: many concurrent GETs, with repeats and unknown ids mixed
/// in, must each come back with exactly the job asked for (or 404).
async fn concurrent_reads_each_get_their_own_job(backend: Backend) {
    use futures_util::StreamExt;
    let app = TestApp::spawn(backend).await;
    let targets: Vec<String> = (0..40).map(|i| format!("host-{i}")).collect();
    let bodies = targets
        .iter()
        .map(|t| {
            let mut b = job_body("health_check", 1, false);
            b["target"] = json!(t);
            b
        })
        .collect();
    let ids = post_many(&app.client, &app.addr, bodies, 8).await;
    let mut want: std::collections::HashMap<Uuid, String> = std::collections::HashMap::new();
    for id in &ids {
        let job = app.get_job(*id).await;
        want.insert(*id, job["target"].as_str().unwrap().to_owned());
    }
    let unknown: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    // Every id five times plus the unknown ones, interleaved, 64 in flight.
    let asks: Vec<Uuid> = (0..5).flat_map(|_| ids.iter().chain(&unknown).copied()).collect();

    let answers: Vec<(Uuid, u16, Value)> = futures_util::stream::iter(asks.clone())
        .map(|id| {
            let (client, url) = (app.client.clone(), app.url(&format!("/v1/jobs/{id}")));
            async move {
                let r = client.get(url).send().await.expect("GET job");
                let status = r.status().as_u16();
                (id, status, r.json::<Value>().await.expect("json"))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    assert_eq!(answers.len(), asks.len());
    let mut distinct_targets = HashSet::new();
    for (id, status, body) in answers {
        match want.get(&id) {
            Some(target) => {
                assert_eq!(status, 200, "GET {id}: {body}");
                assert_eq!(body["job_id"], id.to_string());
                assert_eq!(body["target"], target.as_str(), "GET {id} answered another job's data: {body}");
                distinct_targets.insert(target.clone());
            }
            None => {
                assert_eq!(status, 404, "GET unknown {id}: {body}");
                assert_eq!(body["status"], 404);
            }
        }
    }
    assert_eq!(distinct_targets.len(), targets.len());
    app.stop().await;
}

both_backends!(cancel_stops_pending_and_running_jobs_and_refuses_finished_ones);
async fn cancel_stops_pending_and_running_jobs_and_refuses_finished_ones(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(db, |c| c.executor.workers = 1).await;
    let running = app.create("restart_service", 30_000, false).await;
    app.wait_for(running, &["RUNNING"], Duration::from_secs(5)).await;
    let pending = app.create("restart_service", 1, false).await;
    let cancel = |id: Uuid| app.client.post(app.url(&format!("/v1/jobs/{id}/cancel"))).send();

    let r1 = cancel(pending).await.unwrap();
    let s1 = r1.status();
    let b1: Value = r1.json().await.unwrap();
    let started = Instant::now();
    let r2 = cancel(running).await.unwrap();
    let s2 = r2.status();
    let b2: Value = r2.json().await.unwrap();
    let again = cancel(running).await.unwrap();
    let unknown = cancel(Uuid::now_v7()).await.unwrap();

    assert_eq!(s1, 200);
    assert_eq!(b1["status"], "CANCELED");
    assert_eq!(b1["started_at"], Value::Null);
    assert_eq!(s2, 200, "{b2}");
    assert_eq!(b2["status"], "CANCELED");
    assert!(started.elapsed() < Duration::from_secs(5), "a running job is interrupted, not waited for");
    assert_eq!(again.status(), 409);
    assert_eq!(again.headers()["content-type"], "application/problem+json");
    assert_eq!(unknown.status(), 404);
    let samples = app.metrics().await;
    assert_eq!(
        value(&samples, "automation_jobs_total", &[("action", "restart_service"), ("status", "CANCELED")]),
        Some(2.0)
    );
    app.stop().await;
}

both_backends!(twenty_concurrent_duplicates_make_one_job);
async fn twenty_concurrent_duplicates_make_one_job(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = job_body("health_check", 1, false);
    let key = format!("key-{}", Uuid::new_v4());

    let requests =
        (0..20).map(|_| app.client.post(app.url("/v1/jobs")).header("Idempotency-Key", &key).json(&body).send());
    let answers = futures_util::future::join_all(requests).await;
    let mut ids = HashSet::new();
    for a in answers {
        let a = a.unwrap();
        assert_eq!(a.status(), 202);
        ids.insert(a.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_owned());
    }
    let other = app
        .client
        .post(app.url("/v1/jobs"))
        .header("Idempotency-Key", &key)
        .json(&job_body("health_check", 2, false))
        .send()
        .await
        .unwrap();
    let listed: Value = app.client.get(app.url("/v1/jobs?limit=500")).send().await.unwrap().json().await.unwrap();

    assert_eq!(ids.len(), 1, "one job for one key: {ids:?}");
    assert_eq!(other.status(), 409);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

both_backends!(failed_attempts_retry_with_backoff_and_timeouts_fail);
async fn failed_attempts_retry_with_backoff_and_timeouts_fail(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(db, |c| {
        c.executor.action_policy = "health_check.max_attempts=3,health_check.backoff_ms=20,rotate_config.timeout_ms=200,rotate_config.max_attempts=1"
            .parse()
            .unwrap()
    })
    .await;

    let retried = app.create("health_check", 1, true).await;
    let timed_out = app.create("rotate_config", 10_000, false).await;
    let r = app.wait_for(retried, &["FAILED"], Duration::from_secs(15)).await;
    let t = app.wait_for(timed_out, &["FAILED"], Duration::from_secs(15)).await;
    let samples = app.metrics().await;

    assert_eq!(r["attempts"], 3);
    assert!(r["error"].as_str().unwrap().contains("simulated failure"));
    assert!(t["error"].as_str().unwrap().contains("timed out"), "{t}");
    assert_eq!(value(&samples, "automation_job_retries_total", &[("action", "health_check")]), Some(2.0));
    assert_eq!(
        value(&samples, "automation_jobs_total", &[("action", "health_check"), ("status", "FAILED")]),
        Some(1.0)
    );
    app.stop().await;
}

both_backends!(a_retry_starts_when_its_backoff_ends_not_at_the_next_poll);
async fn a_retry_starts_when_its_backoff_ends_not_at_the_next_poll(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The poll alone would start the retry a minute later: only the retry's own timer is
    // quick enough for the bound below.
    let app = TestApp::spawn_with(db, |c| {
        c.executor.poll_interval_ms = 60_000;
        c.executor.action_policy = "health_check.max_attempts=2,health_check.backoff_ms=300".parse().unwrap()
    })
    .await;

    let id = app.create("health_check", 1, true).await;
    let job = app.wait_for(id, &["FAILED"], Duration::from_secs(10)).await;

    assert_eq!(job["attempts"], 2, "{job}");
    let events: Value =
        app.client.get(app.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap().json().await.unwrap();
    let kinds: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["created", "claimed", "attempt_failed", "retry_scheduled", "claimed", "finished"], "{events}");
    // The second attempt is claimed once its time has come, and promptly after.
    let time = |e: &Value| chrono::DateTime::parse_from_rfc3339(e.as_str().unwrap()).unwrap();
    let due = time(&events[3]["detail"]["run_at"]);
    let claimed = time(&events[4]["at"]);
    let late = (claimed - due).num_milliseconds();
    assert!((0..1_000).contains(&late), "retry due at {due}, claimed at {claimed}");
    app.stop().await;
}

both_backends!(metrics_equal_the_jobs_finished);
async fn metrics_equal_the_jobs_finished(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = [
        ("restart_service", false, 3),
        ("restart_service", true, 2),
        ("rotate_config", false, 1),
        ("health_check", true, 4),
    ];
    let mut ids = Vec::new();
    for (action, fail, n) in plan {
        for _ in 0..n {
            ids.push(app.create(action, 5, fail).await);
        }
    }
    // Default policy retries failures; make the failing ones terminal and count them after.
    for id in &ids {
        app.wait_for(*id, &["SUCCESS", "FAILED"], Duration::from_secs(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let samples = loop {
        let s = app.metrics().await;
        if value(&s, "automation_job_queue_depth", &[]) == Some(0.0) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    for (action, fail, n) in plan {
        let status = if fail { "FAILED" } else { "SUCCESS" };
        assert_eq!(
            value(&samples, "automation_jobs_total", &[("action", action), ("status", status)]),
            Some(n as f64),
            "{action} {status}"
        );
    }
    assert_eq!(
        value(&samples, "automation_jobs_total", &[("action", "rotate_config"), ("status", "FAILED")]),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "automation_jobs_total", &[("action", "health_check"), ("status", "CANCELED")]),
        Some(0.0)
    );
    assert_eq!(value(&samples, "automation_job_duration_seconds_count", &[("action", "restart_service")]), Some(5.0));
    assert_eq!(value(&samples, "automation_job_duration_seconds_count", &[("action", "health_check")]), Some(4.0));
    assert!(value(&samples, "automation_job_duration_seconds_sum", &[("action", "restart_service")]).unwrap() > 0.0);
    assert_eq!(
        value(&samples, "automation_job_duration_seconds_bucket", &[("action", "restart_service"), ("le", "+Inf")]),
        Some(5.0)
    );
    assert_eq!(value(&samples, "automation_job_queue_depth", &[]), Some(0.0));
    assert_eq!(value(&samples, "automation_jobs_created_total", &[("action", "restart_service")]), Some(5.0));
    // The business series carry exactly their own labels.
    for s in samples.iter().filter(|s| s.name.starts_with("automation_")) {
        assert!(
            s.labels.keys().all(|k| ["action", "status", "le", "reason", "outcome"].contains(&k.as_str())),
            "extra labels on {s:?}"
        );
    }
    assert!(!samples.iter().any(|s| s.name == "target_info"));
    assert!(samples.iter().any(|s| s.name == "http_server_request_duration_seconds_count"
        && s.labels.get("route").map(String::as_str) == Some("/v1/jobs/{job_id}")));
    app.stop().await;
}

both_backends!(graceful_shutdown_loses_no_job);
async fn graceful_shutdown_loses_no_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(db.clone(), |c| {
        c.executor.workers = 4;
        c.executor.shutdown_grace_secs = 1;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        // A mix of quick jobs and some that outlive the grace period.
        let ms = if i % 10 == 0 { 5_000 } else { 50 };
        let action = if i % 2 == 0 { "health_check" } else { "restart_service" };
        ids.push(app.create(action, ms, false).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    app.stop().await;
    let took = t.elapsed();
    let app = TestApp::spawn_with(db, |_| {}).await;
    for id in &ids {
        app.wait_for(*id, &["SUCCESS", "FAILED"], Duration::from_secs(30)).await;
    }

    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    let list: Value = app.client.get(app.url("/v1/jobs?limit=500")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 40);
    app.stop().await;
}

both_backends!(healthz_stays_fast_while_a_thousand_jobs_run);
async fn healthz_stays_fast_while_a_thousand_jobs_run(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(db, |c| c.executor.workers = 1000).await;
    let bodies = (0..1000).map(|_| job_body("health_check", 6_000, false)).collect();
    post_many(&app.client, &app.addr, bodies, 32).await;

    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let r = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        lat.push(t.elapsed());
    }
    lat.sort();
    let p99 = lat[lat.len() * 99 / 100 - 1];
    let running = value(&app.metrics().await, "automation_jobs_running", &[]).unwrap_or(0.0);

    println!("healthz p99 {p99:?} with {running} jobs running");
    assert!(running >= 500.0, "most of the 1000 jobs run at once: {running}");
    assert!(p99 < Duration::from_millis(50), "healthz p99 {p99:?}");
    app.stop().await;
}
