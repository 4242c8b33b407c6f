//! Kubernetes: what `kubectl rollout restart` does (a strategic-merge patch of the pod
//! template's `kubectl.kubernetes.io/restartedAt` annotation), and with `wait`, what
//! `kubectl rollout status` waits for. Through the kube-rs client: in-cluster configuration, or
//! `KUBECONFIG` outside a cluster. (kube's own `Api::restart` writes another annotation key than
//! kubectl, which would make the gateway's restarts look different from everyone else's.)

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::remote::follow;
use super::{Built, Recorder, RunError, RunFuture, RunRequest, Runner, settings};
use crate::jobs::External;

const ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";
/// The field manager kubectl uses for this patch, so server-side field ownership reads the same.
const FIELD_MANAGER: &str = "kubectl-rollout";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "yes")]
    wait: bool,
    #[serde(default = "default_poll")]
    poll_interval_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_poll() -> u64 {
    1000
}

struct Kubernetes {
    wait: bool,
    poll: Duration,
    /// Made on first use: a catalog with a kubernetes action must still start (and be checked)
    /// where no cluster is configured.
    client: OnceCell<(kube::Client, String)>,
}

pub(super) fn build(value: Value) -> Result<Built, String> {
    let s: Settings = settings("kubernetes", value)?;
    let runner = Kubernetes {
        wait: s.wait,
        poll: super::remote::interval(s.poll_interval_ms).map_err(|e| format!("kubernetes.{e}"))?,
        client: OnceCell::new(),
    };
    Ok(Built { runner: Arc::new(runner), needs: Vec::new(), secret_files: Vec::new() })
}

/// The workload kinds a rollout restart applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => Some(Kind::Deployment),
            "statefulset" | "statefulsets" | "sts" => Some(Kind::StatefulSet),
            "daemonset" | "daemonsets" | "ds" => Some(Kind::DaemonSet),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
        }
    }

    fn resource(self) -> ApiResource {
        let kind = match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        };
        ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind))
    }
}

/// What a target names: `namespace/name` (a Deployment) or `kind/namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Workload {
    kind: Kind,
    namespace: String,
    name: String,
}

fn workload(target: &str) -> Result<Workload, RunError> {
    let parts: Vec<&str> = target.split('/').collect();
    let (kind, ns, name) = match parts.as_slice() {
        [ns, name] => (Kind::Deployment, *ns, *name),
        [kind, ns, name] => (
            Kind::parse(kind).ok_or_else(|| {
                RunError::permanent(format!("kubernetes: '{kind}' is not deployment, statefulset or daemonset"))
            })?,
            *ns,
            *name,
        ),
        _ => return Err(RunError::permanent("kubernetes: target must be namespace/name or kind/namespace/name")),
    };
    if ns.is_empty() || name.is_empty() {
        return Err(RunError::permanent("kubernetes: target must be namespace/name or kind/namespace/name"));
    }
    Ok(Workload { kind, namespace: ns.to_owned(), name: name.to_owned() })
}

/// A failed call: 5xx, 429, 408 and no answer at all are worth another try; other statuses
/// (401, 403, 404, 422) are not.
fn failed(what: &str, e: kube::Error) -> RunError {
    match &e {
        kube::Error::Api(status) => {
            let message = format!("kubernetes: {what}: {} ({})", status.message, status.code);
            if status.code >= 500 || status.code == 429 || status.code == 408 {
                RunError::retryable(message)
            } else {
                RunError::permanent(message)
            }
        }
        other => RunError::retryable(format!("kubernetes: {what}: {other}")),
    }
}

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

/// Whether the rollout of `generation` is done, as `kubectl rollout status` decides; an
/// exceeded progress deadline is a permanent failure.
fn rollout_done(kind: Kind, obj: &Value, generation: i64, shown: &str) -> Result<bool, RunError> {
    if int(obj, "/status/observedGeneration").unwrap_or(0) < generation {
        return Ok(false);
    }
    let desired = int(obj, "/spec/replicas").unwrap_or(1);
    let status = |k: &str| int(obj, &format!("/status/{k}")).unwrap_or(0);
    Ok(match kind {
        Kind::Deployment => {
            let stalled = obj.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Progressing")
                        && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
                })
            });
            if stalled {
                return Err(RunError::permanent(format!("rollout of {shown} exceeded its progress deadline")));
            }
            let updated = status("updatedReplicas");
            updated >= desired && status("replicas") <= updated && status("availableReplicas") >= updated
        }
        Kind::StatefulSet => {
            let revisions_match = obj.pointer("/status/currentRevision") == obj.pointer("/status/updateRevision");
            status("updatedReplicas") >= desired && status("readyReplicas") >= desired && revisions_match
        }
        Kind::DaemonSet => {
            let want = status("desiredNumberScheduled");
            status("updatedNumberScheduled") >= want && status("numberAvailable") >= want
        }
    })
}

impl Kubernetes {
    async fn client(&self) -> Result<&(kube::Client, String), RunError> {
        self.client
            .get_or_try_init(|| async {
                let config = kube::Config::infer()
                    .await
                    .map_err(|e| RunError::permanent(format!("kubernetes: no cluster configuration: {e}")))?;
                let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
                let client = kube::Client::try_from(config)
                    .map_err(|e| RunError::permanent(format!("kubernetes: cannot build a client: {e}")))?;
                Ok((client, server))
            })
            .await
    }

    fn api(client: &kube::Client, w: &Workload) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &w.namespace, &w.kind.resource())
    }

    async fn restart(&self, w: &Workload, shown: &str) -> Result<(External, String), RunError> {
        let (client, server) = self.client().await?;
        let api = Self::api(client, w);
        let current = api.get(&w.name).await.map_err(|e| failed(&format!("get {shown}"), e))?;
        if w.kind == Kind::Deployment && current.data.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
            return Err(RunError::permanent("can't restart paused deployment (run rollout resume first)"));
        }
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {ANNOTATION: at}}}}});
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let patched = api
            .patch(&w.name, &params, &Patch::Strategic(patch))
            .await
            .map_err(|e| failed(&format!("patch {shown}"), e))?;
        let generation = patched.metadata.generation.unwrap_or(0);
        let url = format!("{server}/apis/apps/v1/namespaces/{}/{}/{}", w.namespace, w.kind.resource().plural, w.name);
        Ok((External { system: "kubernetes".into(), id: format!("{shown}@{generation}"), url }, at))
    }
}

impl Runner for Kubernetes {
    fn run<'a>(&'a self, request: &'a RunRequest, recorder: &'a dyn Recorder) -> RunFuture<'a> {
        Box::pin(async move {
            let w = workload(&request.target)?;
            let shown = format!("{}/{}/{}", w.kind.name(), w.namespace, w.name);
            let (external, at) = match &request.external {
                Some(e) => (e.clone(), None),
                None => {
                    let (e, at) = self.restart(&w, &shown).await?;
                    recorder.record(e.clone()).await;
                    (e, Some(at))
                }
            };
            let generation: i64 = external.id.rsplit('@').next().and_then(|g| g.parse().ok()).unwrap_or(0);
            if self.wait {
                let (client, _) = self.client().await?;
                let api = Self::api(client, &w);
                follow("kubernetes", self.poll, || async {
                    let obj = api.get(&w.name).await.map_err(|e| failed(&format!("get {shown}"), e))?;
                    let whole = json!({"spec": obj.data.get("spec"), "status": obj.data.get("status")});
                    rollout_done(w.kind, &whole, generation, &shown).map(|done| done.then_some(()))
                })
                .await?;
            }
            Ok(json!({
                "kind": w.kind.name(), "namespace": w.namespace, "name": w.name,
                "restartedAt": at, "generation": generation, "url": external.url,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_workload() {
        assert_eq!(workload("apps/web").unwrap().kind, Kind::Deployment);
        assert_eq!(workload("StatefulSet/db/pg").unwrap().kind, Kind::StatefulSet);
        assert!(workload("web").is_err());
        assert!(workload("pod/a/b").is_err());
    }

    #[test]
    fn a_rollout_is_done_as_kubectl_says() {
        let obj = |observed: i64, updated: i64, total: i64, available: i64| json!({"spec": {"replicas": 2}, "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total, "availableReplicas": available}});
        let d = Kind::Deployment;
        assert!(!rollout_done(d, &obj(1, 2, 2, 2), 2, "x").unwrap());
        assert!(!rollout_done(d, &obj(2, 2, 3, 2), 2, "x").unwrap());
        assert!(!rollout_done(d, &obj(2, 2, 2, 1), 2, "x").unwrap());
        assert!(rollout_done(d, &obj(2, 2, 2, 2), 2, "x").unwrap());
        let stalled = json!({"spec": {}, "status": {"observedGeneration": 3, "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}});
        assert!(rollout_done(d, &stalled, 3, "x").is_err());
    }
}
