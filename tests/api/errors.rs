//! Every error row of the contract answers problem+json with the right status.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::both_backends;
use crate::helpers::*;

async fn assert_problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert_eq!(ct, "application/problem+json", "content type for {status}");
    let body: Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(), "{body}");
    body
}

both_backends!(every_error_row_answers_problem_json);
async fn every_error_row_answers_problem_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let post = |body: &'static str, ct: &'static str| {
        app.client.post(app.url("/v1/jobs")).header("content-type", ct).body(body).send()
    };

    let malformed = assert_problem(post("{\"action\": ", "application/json").await.unwrap(), 400).await;
    let missing =
        assert_problem(post("{\"action\":\"health_check\",\"target\":\"x\"}", "application/json").await.unwrap(), 400)
            .await;
    let wrong_type = assert_problem(
        post(
            "{\"action\":\"health_check\",\"target\":\"x\",\"requested_by\":\"me\",\"parameters\":[1,2]}",
            "application/json",
        )
        .await
        .unwrap(),
        400,
    )
    .await;
    let unknown = assert_problem(
        app.post_job(&json!({"action": "reboot_world", "target": "x", "requested_by": "me"})).await,
        422,
    )
    .await;
    let bad_target = assert_problem(
        app.post_job(&json!({"action": "health_check", "target": "a b", "requested_by": "me"})).await,
        400,
    )
    .await;
    let mut deep = json!(1);
    for _ in 0..20 {
        deep = json!({ "a": deep });
    }
    let deep_body = json!({"action": "health_check", "target": "x", "requested_by": "me", "parameters": deep});
    let too_deep = assert_problem(app.post_job(&deep_body).await, 422).await;
    let wrong_ct = assert_problem(post("{}", "text/plain").await.unwrap(), 415).await;
    let big = "x".repeat(70 * 1024);
    let too_large =
        app.client.post(app.url("/v1/jobs")).header("content-type", "application/json").body(big).send().await.unwrap();
    assert_problem(too_large, 413).await;
    let not_found =
        assert_problem(app.client.get(app.url(&format!("/v1/jobs/{}", Uuid::now_v7()))).send().await.unwrap(), 404)
            .await;
    assert_problem(app.client.get(app.url("/v1/jobs/not-a-uuid")).send().await.unwrap(), 400).await;
    assert_problem(app.client.get(app.url("/v2/whatever")).send().await.unwrap(), 404).await;
    assert_problem(app.client.delete(app.url("/v1/jobs")).send().await.unwrap(), 405).await;
    assert_problem(app.client.get(app.url("/v1/jobs?limit=0")).send().await.unwrap(), 400).await;
    assert_problem(app.client.get(app.url("/v1/jobs?status=DONE")).send().await.unwrap(), 400).await;
    assert_problem(app.client.get(app.url("/v1/jobs?cursor=garbage")).send().await.unwrap(), 400).await;

    assert!(malformed["detail"].as_str().unwrap().contains("parse"));
    assert!(missing["detail"].as_str().unwrap().contains("CreateJobRequest"), "{missing}");
    assert_eq!(wrong_type["errors"][0]["field"], "parameters", "{wrong_type}");
    assert_eq!(unknown["supported_actions"], json!(["restart_service", "rotate_config", "health_check"]));
    assert_eq!(unknown["errors"][0]["field"], "action");
    assert!(bad_target["detail"].as_str().unwrap().contains("target"), "{bad_target}");
    assert_eq!(too_deep["errors"][0]["field"], "parameters");
    assert!(wrong_ct["detail"].as_str().unwrap().contains("text/plain"));
    assert!(not_found["detail"].as_str().unwrap().contains("no job"));
    app.stop().await;
}

both_backends!(a_full_queue_answers_429_with_retry_after);
async fn a_full_queue_answers_429_with_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(db, |c| {
        c.executor.workers = 1;
        c.store.max_pending = 2;
    })
    .await;
    let first = app.create("health_check", 30_000, false).await;
    app.wait_for(first, &["RUNNING"], std::time::Duration::from_secs(5)).await;
    app.create("health_check", 1, false).await;
    app.create("health_check", 1, false).await;

    let resp = app.post_job(&job_body("health_check", 1, false)).await;

    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = assert_problem(resp, 429).await;
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body["detail"].as_str().unwrap().contains("queue full"));
    app.stop().await;
}
