//! The command line and process-level behaviour: settings validation, --help, warnings about
//! unknown variables, secrets never printed, and the Loki push (checked on the wire against a
//! local receiver, since no Loki runs here).

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_automation-gateway");

#[test]
fn invalid_settings_exit_non_zero_with_a_clear_message() {
    for (var, value, mention) in [
        ("GATEWAY_WORKERS", "lots", "--workers"),
        ("GATEWAY_SIM_FAILURE_RATE", "1.5", "outside 0..1"),
        ("GATEWAY_SIM_DURATION_MS", "20-5", "above maximum"),
        ("GATEWAY_ACTION_POLICY", "health_check.retries=2", "unknown key"),
        ("DATABASE_URL", "mysql://x", "must start with"),
        ("GATEWAY_LISTEN", "nowhere", "--listen"),
    ] {
        let out = Command::new(BIN).env_clear().env(var, value).arg("serve").output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(stderr.contains(mention), "{var}={value}: {stderr}");
    }
}

#[test]
fn help_documents_every_setting() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let client = Command::new(BIN).args(["jobs", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&client.stdout);
    for var in automation_gateway::config::KNOWN_ENV {
        assert!(help.contains(var), "--help does not mention {var}");
    }
    for cmd in ["serve", "migrate", "openapi"] {
        assert!(help.contains(cmd), "--help does not mention {cmd}");
    }
}

#[test]
fn version_names_the_release_and_the_commit() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    // Built from a git checkout (as the tests are), the commit is HEAD's, unless the build
    // was handed GIT_COMMIT.
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().expect("git");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let expected = std::env::var("GIT_COMMIT").map(|c| c.chars().take(12).collect()).unwrap_or(head);
    assert!(text.trim() == format!("automation-gateway {} (commit {expected})", env!("CARGO_PKG_VERSION")), "{text}");
}

#[test]
fn openapi_subcommand_prints_the_spec_without_a_database() {
    let out = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .arg("openapi")
        .output()
        .expect("run");
    assert!(out.status.success());
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(spec["openapi"], "3.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_migrations_and_exits() {
    let db = TestDb::new(Backend::Postgres).await;
    let out = Command::new(BIN).env_clear().env("DATABASE_URL", &db.url).arg("migrate").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    assert!(status_counts(&db.url).await.is_empty(), "the jobs table exists and is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_variables_are_warned_about_and_passwords_never_printed() {
    let db = TestDb::new(Backend::Postgres).await;
    // Trust auth ignores the password, so the URL works and its secret must still not leak.
    let url = db.url.replacen("postgres@", "postgres:hunter2-secret@", 1);
    let gw = Gateway::start(&url, &[("GATEWAY_WROKERS", "3")]).await;
    let id = post_many(&http_client(), &gw.addr, vec![job_body("health_check", 1, false)], 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = gw.log.lock().unwrap().join("\n");
    assert!(log.contains("GATEWAY_WROKERS"), "typo not reported");
    assert!(log.contains("REDACTED"), "effective config is logged, redacted");
    assert!(!log.contains("hunter2-secret"), "password leaked into the log");
    let accepted = log.lines().find(|l| l.contains("\"outcome\":\"accepted\"")).expect("audit line of the create");
    let line: serde_json::Value = serde_json::from_str(accepted).expect("JSON log line");
    assert_eq!(line["job_id"], id[0].to_string());
    assert_eq!(line["action"], "health_check");
    assert_eq!(line["target"], "demo-api");
}

/// A tiny HTTP server that records each request (path, headers, body) and answers 204.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, String, Vec<u8>)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let body = buf[end + 4..end + 4 + len].to_vec();
                        buf.drain(..end + 4 + len);
                        let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                        let _ = tx.send((path, head, body));
                        let _ = sock.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_over_otlp_http() {
    let (collector, mut exports) = receiver().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let gw =
        Gateway::start(&db.url, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector), ("OTEL_BSP_SCHEDULE_DELAY", "200")])
            .await;
    let ids = post_many(&http_client(), &gw.addr, vec![job_body("rotate_config", 1, false)], 1).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let head = loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let (path, head, body) =
            tokio::time::timeout(wait, exports.recv()).await.expect("an OTLP export").expect("receiver");
        assert_eq!(path, "/v1/traces");
        seen.extend_from_slice(&body);
        let text = String::from_utf8_lossy(&seen);
        if text.contains("http.request") && text.contains(&ids[0].to_string()) {
            break head;
        }
    };

    let text = String::from_utf8_lossy(&seen);
    assert!(head.to_ascii_lowercase().contains("content-type: application/x-protobuf"), "{head}");
    assert!(text.contains("automation-gateway"), "service.name resource");
    assert!(text.contains("/v1/jobs"), "route template on the request span");
    assert!(text.contains("rotate_config"), "job span attributes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_pushed_to_loki_with_low_cardinality_labels() {
    let (loki, mut pushes) = receiver().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let gw =
        Gateway::start(&db.url, &[("LOKI_URL", &loki), ("GATEWAY_ENV", "ci"), ("GATEWAY_LOKI_TENANT", "platform")])
            .await;
    let ids = post_many(&http_client(), &gw.addr, vec![job_body("restart_service", 1, false)], 1).await;
    let job_id = ids[0].to_string();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    let head = loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let (path, head, body) =
            tokio::time::timeout(wait, pushes.recv()).await.expect("a Loki push").expect("receiver");
        assert_eq!(path, "/loki/api/v1/push");
        let raw = snap::raw::Decoder::new().decompress_vec(&body).expect("snappy-compressed body");
        seen.push_str(&String::from_utf8_lossy(&raw));
        if seen.contains(&job_id) {
            break head;
        }
    };

    assert!(head.to_ascii_lowercase().contains("content-type: application/x-protobuf"), "{head}");
    // Multi-tenant Loki (its Helm chart's default) answers 401 to a push without the tenant.
    assert!(head.to_ascii_lowercase().contains("x-scope-orgid: platform"), "{head}");
    assert!(seen.contains("app=\"automation-gateway\""), "app label");
    assert!(seen.contains("env=\"ci\""), "env label");
    assert!(seen.contains("level=\"info\""), "level label");
    assert!(!seen.contains(&format!("job_id=\"{job_id}\"")), "job ids are fields, never labels");
}
