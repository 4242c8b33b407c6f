//! Authentication, authorization, the audit trail, the rate limit and token rotation.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::*;

const ADMIN: &str = "agw_admin_0123456789abcdef";
const CI: &str = "agw_ci_bot_fedcba9876543210";
const READER: &str = "agw_reader_1111111111111111";

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

fn tokens_yaml() -> String {
    format!(
        "tokens:\n\
         - name: admin\n  sha256: \"{}\"\n  actions: [\"*\"]\n  can_read: true\n  can_cancel: true\n\
         - name: ci-bot\n  sha256: \"{}\"\n  actions: [health_check]\n  can_read: false\n  can_cancel: false\n\
         - name: reader\n  sha256: \"{}\"\n  actions: []\n  scope: [\"*\"]\n  can_read: true\n  can_cancel: false\n",
        sha(ADMIN),
        sha(CI),
        sha(READER)
    )
}

fn write_tokens(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("tokens.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn secured_app(backend: Backend, dir: &tempfile::TempDir) -> TestApp {
    let path = write_tokens(dir, &tokens_yaml());
    TestApp::spawn_with(TestDb::new(backend).await, |c| c.http.auth_tokens_file = Some(path)).await
}

fn req(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = app.client.request(m, app.url(path));
    if method == "POST" && path == "/v1/jobs" {
        r = r.json(&job_body("health_check", 1, false));
    }
    if let Some(t) = token { r.bearer_auth(t) } else { r }
}

async fn expect_problem(r: reqwest::RequestBuilder, status: u16) -> reqwest::header::HeaderMap {
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), status, "{:?}", resp.url().path());
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    resp.headers().clone()
}

crate::both_backends!(every_v1_route_needs_a_valid_token);
async fn every_v1_route_needs_a_valid_token(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let app = secured_app(backend, &dir).await;
    let id = Uuid::now_v7();
    let routes = [
        ("POST", "/v1/jobs".to_owned()),
        ("GET", "/v1/jobs".to_owned()),
        ("GET", format!("/v1/jobs/{id}")),
        ("GET", format!("/v1/jobs/{id}/events")),
        ("POST", format!("/v1/jobs/{id}/cancel")),
    ];

    for (method, path) in &routes {
        let h = expect_problem(req(&app, method, path, None), 401).await;
        assert!(h["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
        expect_problem(req(&app, method, path, Some("agw_not_a_real_token")), 401).await;
        expect_problem(req(&app, method, path, Some(&format!("{ADMIN}x"))), 401).await;
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();

    assert_eq!(health.status(), 200, "probes stay open");
    assert_eq!(ready["auth"], "enabled");
    assert_eq!(metrics.status(), 200, "/metrics is open by default");
    app.stop().await;
}

crate::both_backends!(rights_are_enforced_per_action_read_and_cancel);
async fn rights_are_enforced_per_action_read_and_cancel(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let app = secured_app(backend, &dir).await;

    let created = req(&app, "POST", "/v1/jobs", Some(CI)).send().await.unwrap();
    assert_eq!(created.status(), 202);
    let request_id = created.headers()["x-request-id"].to_str().unwrap().to_owned();
    let id: Uuid = created.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().parse().unwrap();
    let restart = app
        .client
        .post(app.url("/v1/jobs"))
        .bearer_auth(CI)
        .json(&job_body("restart_service", 1, false))
        .send()
        .await
        .unwrap();
    let reader_create = req(&app, "POST", "/v1/jobs", Some(READER)).send().await.unwrap();
    let ci_read = req(&app, "GET", &format!("/v1/jobs/{id}"), Some(CI)).send().await.unwrap();
    let ci_list = req(&app, "GET", "/v1/jobs", Some(CI)).send().await.unwrap();
    let ci_events = req(&app, "GET", &format!("/v1/jobs/{id}/events"), Some(CI)).send().await.unwrap();
    let reader_cancel = req(&app, "POST", &format!("/v1/jobs/{id}/cancel"), Some(READER)).send().await.unwrap();
    let reader_read = req(&app, "GET", &format!("/v1/jobs/{id}"), Some(READER)).send().await.unwrap();

    assert_eq!(restart.status(), 403, "ci-bot may only trigger health_check");
    assert_eq!(reader_create.status(), 403);
    assert_eq!(ci_read.status(), 403);
    assert_eq!(ci_list.status(), 403);
    assert_eq!(ci_events.status(), 403);
    assert_eq!(reader_cancel.status(), 403);
    assert_eq!(reader_read.status(), 200);
    let job: Value = reader_read.json().await.unwrap();
    assert_eq!(job["submitted_by"], "ci-bot");
    assert_eq!(job["requested_by"], "tests@example.com");

    // The audit trail on the job: who created it, who canceled it, from which request.
    let long = app
        .client
        .post(app.url("/v1/jobs"))
        .bearer_auth(ADMIN)
        .json(&job_body("restart_service", 30_000, false))
        .send()
        .await
        .unwrap();
    let long_id: Uuid = long.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().parse().unwrap();
    let cancel = req(&app, "POST", &format!("/v1/jobs/{long_id}/cancel"), Some(ADMIN)).send().await.unwrap();
    let cancel_rid = cancel.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(cancel.status() == 200 || cancel.status() == 202);
    let events: Value = req(&app, "GET", &format!("/v1/jobs/{long_id}/events"), Some(ADMIN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first: Value =
        req(&app, "GET", &format!("/v1/jobs/{id}/events"), Some(ADMIN)).send().await.unwrap().json().await.unwrap();

    assert_eq!(first[0]["event"], "created");
    assert_eq!(first[0]["actor"], "ci-bot");
    assert_eq!(first[0]["request_id"], request_id);
    // The log also holds the executor's own events (claimed, ...): find the cancel.
    let cancel_event = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "canceled" || e["event"] == "cancel_requested")
        .unwrap_or_else(|| panic!("no cancel event in {events}"));
    assert_eq!(cancel_event["actor"], "admin");
    assert_eq!(cancel_event["request_id"], cancel_rid);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log_and_audit_lines_carry_who_what_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tokens(&dir, &tokens_yaml());
    let db = TestDb::new(Backend::Sqlite).await;
    let gw =
        Gateway::start(&db.url, &[("GATEWAY_AUTH_TOKENS_FILE", path.to_str().unwrap()), ("RUST_LOG", "debug")]).await;
    let client = http_client();
    let post = |token: &'static str| {
        client.post(format!("{}/v1/jobs", gw.addr)).bearer_auth(token).json(&job_body("health_check", 1, false)).send()
    };

    let ok = post(CI).await.unwrap();
    let id = ok.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_owned();
    let wrong = post("agw_wrong_token_should_not_be_logged").await.unwrap();
    let denied = client
        .post(format!("{}/v1/jobs", gw.addr))
        .bearer_auth(CI)
        .json(&job_body("restart_service", 1, false))
        .send()
        .await
        .unwrap();
    let cancel = client.post(format!("{}/v1/jobs/{id}/cancel", gw.addr)).bearer_auth(ADMIN).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(wrong.status(), 401);
    assert_eq!(denied.status(), 403);
    assert!(cancel.status() == 200 || cancel.status() == 409);
    let log = gw.log.lock().unwrap().join("\n");
    for secret in [CI, ADMIN, "agw_wrong_token_should_not_be_logged"] {
        assert!(!log.contains(secret), "a token leaked into the log");
    }
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let audit: Vec<&Value> = lines.iter().filter(|l| l["message"] == "audit").collect();
    let accepted = audit.iter().find(|l| l["outcome"] == "accepted").expect("audit line of the create");
    assert_eq!(accepted["event"], "job.create");
    assert_eq!(accepted["identity"], "ci-bot");
    assert_eq!(accepted["job_id"], id);
    assert_eq!(accepted["action"], "health_check");
    assert_eq!(accepted["target"], "demo-api");
    assert!(accepted["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(accepted["timestamp"].is_string());
    assert!(
        audit
            .iter()
            .any(|l| l["outcome"] == "refused 403" && l["identity"] == "ci-bot" && l["action"] == "restart_service")
    );
    assert!(audit.iter().any(|l| l["event"] == "job.cancel" && l["identity"] == "admin" && l["job_id"] == id));
    assert!(lines.iter().any(|l| l["event"] == "auth.failed" && l["reason"] == "unknown token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after_per_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tokens(&dir, &tokens_yaml());
    let app = TestApp::spawn_with(TestDb::new(Backend::Sqlite).await, |c| {
        c.http.auth_tokens_file = Some(path);
        c.http.rate_limit = 1;
        c.http.rate_limit_burst = 3;
    })
    .await;

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(req(&app, "GET", "/v1/jobs", Some(READER)).send().await.unwrap());
    }
    let other = req(&app, "GET", "/v1/jobs", Some(ADMIN)).send().await.unwrap();

    let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(codes, [200, 200, 200, 429]);
    assert!(statuses[3].headers().contains_key("retry-after"));
    assert_eq!(other.status(), 200, "another identity has its own bucket");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tokens_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tokens(&dir, &tokens_yaml());
    let app =
        TestApp::spawn_with(TestDb::new(Backend::Sqlite).await, |c| c.http.auth_tokens_file = Some(path.clone())).await;
    let new_token = "agw_rotated_token_2222222222222";
    assert_eq!(req(&app, "GET", "/v1/jobs", Some(new_token)).send().await.unwrap().status(), 401);

    let rotated = tokens_yaml().replace(&sha(READER), &sha(new_token));
    std::fs::write(&path, rotated).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while req(&app, "GET", "/v1/jobs", Some(new_token)).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the new token was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(&path, "tokens: [this is not valid").unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;

    assert_eq!(req(&app, "GET", "/v1/jobs", Some(READER)).send().await.unwrap().status(), 401, "the old token is gone");
    assert_eq!(
        req(&app, "GET", "/v1/jobs", Some(new_token)).send().await.unwrap().status(),
        200,
        "a broken file keeps the last good tokens"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tokens(&dir, &tokens_yaml());
    let app = TestApp::spawn_with(TestDb::new(Backend::Sqlite).await, |c| {
        c.http.auth_tokens_file = Some(path);
        c.http.metrics_require_token = true;
    })
    .await;

    let open = app.client.get(app.url("/metrics")).send().await.unwrap();
    let with = app.client.get(app.url("/metrics")).bearer_auth(READER).send().await.unwrap();

    assert_eq!(open.status(), 401);
    assert_eq!(with.status(), 200);
    app.stop().await;
}

#[test]
fn tokens_are_compared_in_constant_time() {
    // The comparison itself is `subtle::ConstantTimeEq` over SHA-256 digests, scanning every
    // entry without an early exit; this guards against a refactor back to `==`.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/auth.rs")).unwrap();
    let body = &src[src.find("pub fn authenticate").unwrap()..];
    let body = &body[..body.find("\n    }\n").unwrap()];
    assert!(body.contains(".ct_eq("), "{body}");
    assert!(!body.contains("==") && !body.contains("break") && !body.contains("return"), "{body}");
}

#[test]
fn the_token_subcommand_prints_a_token_and_its_hash() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_automation-gateway")).arg("token").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().find_map(|l| l.strip_prefix("token:")).unwrap().trim();
    let hash = text.lines().find_map(|l| l.strip_prefix("sha256:")).unwrap().trim();
    assert_eq!(hash, sha(token));
    assert!(token.len() >= 40);
    let _ = json!({});
}
