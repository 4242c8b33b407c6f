//! The committed OpenAPI document matches the code, and each operation declares the statuses
//! it returns.

use serde_json::Value;

#[test]
fn committed_openapi_json_matches_the_code() {
    let generated = automation_gateway::openapi_spec();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .expect("openapi.json is committed at the repository root");
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi.json is stale: run `cargo run -- openapi > openapi.json` and commit it"
    );
}

#[test]
fn operations_declare_their_error_statuses() {
    let spec: Value = serde_json::from_str(&automation_gateway::openapi_spec()).unwrap();
    let statuses = |path: &str, method: &str| -> Vec<String> {
        let mut v: Vec<String> =
            spec["paths"][path][method]["responses"].as_object().unwrap().keys().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(
        statuses("/v1/jobs", "post"),
        ["202", "400", "401", "403", "408", "409", "413", "415", "422", "429", "500", "503"]
    );
    assert_eq!(statuses("/v1/jobs/{job_id}", "get"), ["200", "400", "401", "403", "404", "429", "500", "503"]);
    assert_eq!(statuses("/v1/jobs/{job_id}/events", "get"), ["200", "400", "401", "403", "404", "429", "500", "503"]);
    assert_eq!(statuses("/v1/jobs", "get"), ["200", "400", "401", "403", "429", "500", "503"]);
    assert_eq!(
        statuses("/v1/jobs/{job_id}/cancel", "post"),
        ["200", "202", "400", "401", "403", "404", "409", "429", "500", "503"]
    );
    // The bearer scheme is declared, and optional (authentication can be off).
    assert_eq!(spec["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    let security = &spec["paths"]["/v1/jobs"]["post"]["security"];
    assert!(security.as_array().unwrap().iter().any(|s| s.get("bearerAuth").is_some()), "{security}");
    let problem = &spec["paths"]["/v1/jobs"]["post"]["responses"]["422"]["content"];
    assert!(problem.get("application/problem+json").is_some(), "{problem}");
    let example = &spec["components"]["schemas"]["CreateJobRequest"]["example"];
    assert_eq!(example["action"], "restart_service");
}
