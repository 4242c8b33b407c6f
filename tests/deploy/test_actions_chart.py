"""Chart, issue 12: the actions catalog (GATEWAY_ACTIONS_FILE from a ConfigMap, pods rolled by a
checksum), runner token files from existing Secrets, RBAC of the kubernetes runner, NetworkPolicy
egress to the runners' destinations, the strict schema of all of it, and the production catalog."""
from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import CHART, NAMESPACE, REPO, by_kind, k8s_errors, objects, one, render

ACTIONS_PATH = "/etc/automation-gateway/actions/actions.yaml"
SECRETS_DIR = "/etc/automation-gateway/secrets"
PRODUCTION = REPO / "apps" / "automation-gateway" / "values-production.yaml"
RBAC_RULES = [{
    "apiGroups": ["apps"],
    "resources": ["deployments", "statefulsets", "daemonsets"],
    "verbs": ["get", "list", "watch", "patch"],
}]

# Strings that a careless template would turn into other types or break: they must come back as is.
CATALOG = {
    "restart_service": {
        "runner": "kubernetes",
        "description": "Rolling restart.\nSecond line: 'quoted', \"double\", #hash, ünïcödé",
        "targets": ["apps/*", "kube-system/coredns"],
        "concurrency": {"per_target": 1},
        "policy": {"timeout_ms": 600000, "max_attempts": 1, "backoff_ms": 0, "on_lost": "fail"},
        "kubernetes": {"wait": True, "poll_interval_ms": 1000},
    },
    "rotate_config": {
        "runner": "awx",
        "parameters_schema": {
            "type": "object",
            "properties": {"reason": {"type": "string", "minLength": 3}, "version": {"type": "integer"}},
            "required": ["reason"],
            "additionalProperties": False,
        },
        "awx": {
            "url": "https://awx.example.com",
            "token_file": f"{SECRETS_DIR}/awx/token",
            "job_template_id": 42,
            "limit": "{{ target }}",
            "extra_vars": {"reason": "{{parameters.reason}}", "version": "{{ parameters.version }}",
                           "flag": "yes", "number_text": "0123", "on": "on", "empty": "", "null_text": "null"},
        },
    },
    "health_check": {
        "runner": "http",
        "targets": ["*.svc:8080"],
        "http": {"url": "http://{{ target }}/healthz", "expect_status": [200, 204], "headers": {"X-Job": "{{ job_id }}"}},
    },
    "smoke": {"runner": "simulated"},
}
SECRETS = [{"name": "awx", "secretName": "awx-credentials", "key": "token"}]


def catalog_values(**extra) -> dict:
    values = {"actions": copy.deepcopy(CATALOG), "runnerSecrets": copy.deepcopy(SECRETS)}
    values.update(extra)
    return values


def main_container(docs: list[dict]) -> tuple[dict, dict]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def actions_configmap(docs: list[dict]) -> dict:
    found = [d for d in by_kind(docs, "ConfigMap") if d["__template__"].endswith("actions-configmap.yaml")]
    assert len(found) == 1, f"expected one actions ConfigMap, got {len(found)}"
    return found[0]


def refused(values: dict, error: str) -> str:
    import helm_python as helm

    with pytest.raises(getattr(helm, error)) as exc:
        render(values)
    return str(exc.value)


# --- the catalog ----------------------------------------------------------------------------------


def test_without_actions_the_service_keeps_its_built_in_actions():
    docs = objects(render({}))
    assert not [d for d in by_kind(docs, "ConfigMap") if d["__template__"].endswith("actions-configmap.yaml")]
    dep = one(docs, "Deployment")
    pod, main = main_container(docs)
    assert "GATEWAY_ACTIONS_FILE" not in {e["name"] for e in main["env"]}
    assert all(v["name"] != "actions" for v in pod["volumes"])
    assert "checksum/actions" not in (dep["spec"]["template"]["metadata"].get("annotations") or {})
    assert pod["automountServiceAccountToken"] is False
    assert not by_kind(docs, "Role") and not by_kind(docs, "ClusterRole")


def test_the_configmap_holds_exactly_the_catalog():
    values = catalog_values()
    docs = objects(render(values))
    cm = actions_configmap(docs)
    assert cm["metadata"]["name"] == "automation-gateway-actions"
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert set(cm["data"]) == {"actions.yaml"}
    parsed = yaml.safe_load(cm["data"]["actions.yaml"])
    assert parsed == {"actions": values["actions"]}
    assert k8s_errors(cm) == []


def test_the_catalog_is_mounted_read_only_and_named_by_the_env_var():
    docs = objects(render(catalog_values()))
    pod, main = main_container(docs)
    env = {e["name"]: e for e in main["env"]}
    assert env["GATEWAY_ACTIONS_FILE"] == {"name": "GATEWAY_ACTIONS_FILE", "value": ACTIONS_PATH}
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    mount = mounts["actions"]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in pod["volumes"]}["actions"]
    cm = volume["configMap"]
    assert cm["name"] == actions_configmap(docs)["metadata"]["name"]
    assert len(cm["items"]) == 1
    assert mount["mountPath"].rstrip("/") + "/" + cm["items"][0]["path"] == ACTIONS_PATH
    assert cm["items"][0]["key"] == "actions.yaml"
    assert k8s_errors(one(docs, "Deployment")) == []


def test_the_migration_step_does_not_get_the_catalog():
    for mode in ("job", "initContainer"):
        docs = objects(render(catalog_values(
            database={"type": "postgres", "postgres": {"existingSecret": "db"}, "migration": {"mode": mode}}, replicaCount=2)))
        if mode == "job":
            pod = one(docs, "Job")["spec"]["template"]["spec"]
            migrate = pod["containers"][0]
        else:
            pod = one(docs, "Deployment")["spec"]["template"]["spec"]
            migrate = pod["initContainers"][0]
        assert migrate["args"] == ["migrate"]
        assert "GATEWAY_ACTIONS_FILE" not in {e["name"] for e in migrate["env"]}
        assert all(m["name"] != "actions" for m in migrate.get("volumeMounts") or [])


def _checksum(values: dict) -> tuple[str, str]:
    docs = objects(render(values))
    annotation = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/actions"]
    data = actions_configmap(docs)["data"]["actions.yaml"]
    return annotation, data


def test_the_checksum_annotation_is_the_sha256_of_the_configmap_data_and_follows_it():
    first, data = _checksum(catalog_values())
    assert first == hashlib.sha256(data.encode()).hexdigest()
    assert _checksum(catalog_values())[0] == first, "the checksum must be stable"
    changed = catalog_values()
    changed["actions"]["health_check"]["http"]["expect_status"] = [200]
    assert _checksum(changed)[0] != first
    added = catalog_values()
    added["actions"]["another"] = {"runner": "simulated"}
    assert _checksum(added)[0] not in (first, _checksum(changed)[0])
    unrelated = catalog_values(config={"workers": 3})
    assert _checksum(unrelated)[0] == first, "only a catalog change rolls the pods for the catalog"


def test_pod_annotations_are_kept_next_to_the_checksum():
    docs = objects(render(catalog_values(podAnnotations={"example.com/owner": "platform"})))
    ann = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert ann["example.com/owner"] == "platform" and re.fullmatch(r"[0-9a-f]{64}", ann["checksum/actions"])


def test_action_policy_overrides_must_name_catalog_actions():
    msg = refused(catalog_values(config={"actionPolicy": "restart_service.timeout_ms=1,reboot_world.max_attempts=2"}), "HelmRenderError")
    assert "reboot_world" in msg and "config.actionPolicy" in msg
    render(catalog_values(config={"actionPolicy": "restart_service.timeout_ms=1000,health_check.max_attempts=2"}))


# --- runner secrets --------------------------------------------------------------------------------


def test_runner_secrets_are_mounted_read_only_under_their_names():
    secrets = [
        {"name": "awx", "secretName": "awx-credentials", "key": "token"},
        {"name": "internal-ca", "secretName": "ca-bundle"},
    ]
    values = catalog_values(runnerSecrets=secrets)
    values["actions"]["health_check"]["http"]["ca_file"] = f"{SECRETS_DIR}/internal-ca/ca.crt"
    docs = objects(render(values))
    pod, main = main_container(docs)
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for s in secrets:
        mount = mounts[f"{SECRETS_DIR}/{s['name']}"]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == s["secretName"]
        assert secret["defaultMode"] & 0o007 == 0, "token files must not be world-readable"
        if "key" in s:
            assert secret["items"] == [{"key": s["key"], "path": s["key"]}]
        else:
            assert "items" not in secret, "without a key every key of the Secret is mounted"
    # The awx token_file of the catalog is exactly the mounted key.
    awx = volumes[mounts[f"{SECRETS_DIR}/awx"]["name"]]["secret"]
    assert CATALOG["rotate_config"]["awx"]["token_file"] == f"{SECRETS_DIR}/awx/{awx['items'][0]['path']}"
    # Runner Secrets are never created by the chart (the generated API tokens Secret is the only one).
    assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == ["automation-gateway-generated-tokens"]
    assert k8s_errors(one(docs, "Deployment")) == []


@pytest.mark.parametrize(
    "secrets,token_file,expected",
    [
        ([], f"{SECRETS_DIR}/awx/token", "runnerSecrets has no entry named \"awx\""),
        ([{"name": "awx", "secretName": "awx-credentials", "key": "api-token"}], f"{SECRETS_DIR}/awx/token", "mounts only the key \"api-token\""),
        ([{"name": "awx", "secretName": "awx-credentials"}], f"{SECRETS_DIR}/awx", "not a file in it"),
        ([{"name": "awx", "secretName": "a"}, {"name": "awx", "secretName": "b"}], f"{SECRETS_DIR}/awx/token", "used twice"),
    ],
    ids=["unmounted-secret", "other-key", "directory", "duplicate-name"],
)
def test_token_files_under_the_secrets_directory_must_be_mounted(secrets, token_file, expected):
    values = catalog_values(runnerSecrets=secrets)
    values["actions"]["rotate_config"]["awx"]["token_file"] = token_file
    msg = refused(values, "HelmRenderError")
    assert expected in msg, msg


def test_token_files_elsewhere_are_left_to_the_user():
    values = catalog_values(runnerSecrets=[], extraVolumes=[{"name": "vault", "emptyDir": {}}],
                            extraVolumeMounts=[{"name": "vault", "mountPath": "/vault"}])
    values["actions"]["rotate_config"]["awx"]["token_file"] = "/vault/awx-token"
    render(values)


# --- RBAC of the kubernetes runner --------------------------------------------------------------------


def test_roles_and_bindings_in_each_listed_namespace():
    docs = objects(render(catalog_values(kubernetesRunner={"rbac": {"namespaces": ["apps", "batch"]}})))
    roles = {d["metadata"]["namespace"]: d for d in by_kind(docs, "Role")}
    bindings = {d["metadata"]["namespace"]: d for d in by_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"apps", "batch"}
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for ns in ("apps", "batch"):
        assert roles[ns]["rules"] == RBAC_RULES
        b = bindings[ns]
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roles[ns]["metadata"]["name"]}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        assert k8s_errors(roles[ns]) == [] and k8s_errors(b) == []
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    pod, _ = main_container(docs)
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == sa


def test_cluster_wide_rbac_is_opt_in():
    docs = objects(render(catalog_values(kubernetesRunner={"rbac": {"namespaces": [], "clusterWide": True}}), name="ag", namespace="ops"))
    cr = one(docs, "ClusterRole")
    crb = one(docs, "ClusterRoleBinding")
    assert cr["rules"] == RBAC_RULES
    assert "namespace" not in cr["metadata"] and "namespace" not in crb["metadata"]
    assert "ops" in cr["metadata"]["name"], "cluster-scoped names must not clash between namespaces"
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cr["metadata"]["name"]}
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "ops"}]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    assert main_container(docs)[0]["automountServiceAccountToken"] is True
    assert k8s_errors(cr) == [] and k8s_errors(crb) == []


def test_rbac_needs_exactly_one_mode_and_a_service_account_of_its_own():
    msg = refused(catalog_values(kubernetesRunner={"rbac": {"namespaces": ["apps"], "clusterWide": True}}), "HelmRenderError")
    assert "either namespaces" in msg
    msg = refused(catalog_values(kubernetesRunner={"rbac": {"namespaces": ["apps"]}}, serviceAccount={"create": False}), "HelmRenderError")
    assert "ServiceAccount" in msg
    docs = objects(render(catalog_values(kubernetesRunner={"rbac": {"namespaces": ["apps"]}},
                                         serviceAccount={"create": False, "name": "gateway-sa"})))
    assert one(docs, "RoleBinding")["subjects"][0]["name"] == "gateway-sa"


def test_the_service_account_object_keeps_its_own_setting():
    docs = objects(render(catalog_values(kubernetesRunner={"rbac": {"namespaces": ["apps"]}})))
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False, \
        "only the gateway's pods mount the token, not every pod that uses the ServiceAccount"
    job_docs = objects(render(catalog_values(kubernetesRunner={"rbac": {"namespaces": ["apps"]}},
                                             database={"type": "postgres", "postgres": {"existingSecret": "db"}})))
    assert one(job_docs, "Job")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


# --- NetworkPolicy egress -----------------------------------------------------------------------------


def _egress(values: dict) -> list[dict]:
    docs = objects(render(values))
    np = next(d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == "automation-gateway")
    assert k8s_errors(np) == []
    assert "Egress" in np["spec"]["policyTypes"]
    return np["spec"]["egress"]


def test_runner_and_api_server_egress_rules_keep_dns():
    egress = _egress(catalog_values(
        kubernetesRunner={"rbac": {"namespaces": ["apps"]}},
        networkPolicy={
            "enabled": True,
            "allowExternalEgress": False,
            "runnerEgress": [
                {"cidr": "10.20.0.0/16", "except": ["10.20.99.0/24"], "ports": [443]},
                {"namespaces": ["apps", "web"], "ports": [8080, 9090]},
            ],
            "kubernetesApi": {"cidr": "10.0.0.1/32", "ports": [443, 6443]},
        },
    ))
    assert {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]} in egress
    assert {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]} in egress
    assert {"to": [{"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.99.0/24"]}}],
            "ports": [{"port": 443, "protocol": "TCP"}]} in egress
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}},
                   {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}}}],
            "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 9090, "protocol": "TCP"}]} in egress
    assert len(egress) == 4


def test_open_egress_renders_no_egress_rules():
    docs = objects(render(catalog_values(networkPolicy={"enabled": True, "allowExternalEgress": True,
                                                        "runnerEgress": [{"cidr": "10.0.0.0/8", "ports": [443]}]})))
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"] and "egress" not in np["spec"]


def test_locked_egress_without_a_way_to_the_api_server_is_refused():
    msg = refused(catalog_values(kubernetesRunner={"rbac": {"namespaces": ["apps"]}},
                                 networkPolicy={"enabled": True, "allowExternalEgress": False}), "HelmRenderError")
    assert "networkPolicy.kubernetesApi.cidr" in msg


# --- the schema ---------------------------------------------------------------------------------------


def _one_action(action: dict) -> dict:
    return {"actions": {"x": action}}


BAD = [
    ("upper-case name", {"actions": {"Restart": {"runner": "simulated"}}}, "Restart"),
    ("name starts with a digit", {"actions": {"1st": {"runner": "simulated"}}}, "1st"),
    ("name with a dash", {"actions": {"restart-service": {"runner": "simulated"}}}, "restart-service"),
    ("name of 64 characters", {"actions": {"a" * 64: {"runner": "simulated"}}}, "a" * 64),
    ("unknown runner", _one_action({"runner": "ansible"}), "runner"),
    ("no runner", _one_action({"description": "x"}), "runner"),
    ("101 actions", {"actions": {f"a{i}": {"runner": "simulated"} for i in range(101)}}, "maxProperties"),
    ("unknown action key", _one_action({"runner": "simulated", "callback": {}}), "callback"),
    ("awx without its block", _one_action({"runner": "awx"}), "awx"),
    ("http without url", _one_action({"runner": "http", "http": {}}), "url"),
    ("block of another runner", _one_action({"runner": "http", "http": {"url": "http://h"}, "awx": {}}), "/actions/x/awx"),
    ("simulated with a block", _one_action({"runner": "simulated", "simulated": {}}), "simulated"),
    ("unknown awx key", _one_action({"runner": "awx", "awx": {"url": "https://a", "token_file": "/t", "job_template_id": 1, "password": "x"}}), "password"),
    ("job template id a string", _one_action({"runner": "awx", "awx": {"url": "https://a", "token_file": "/t", "job_template_id": "42"}}), "job_template_id"),
    ("relative token file", _one_action({"runner": "awx", "awx": {"url": "https://a", "token_file": "token", "job_template_id": 1}}), "token_file"),
    ("jenkins without user", _one_action({"runner": "jenkins", "jenkins": {"url": "https://j", "job": "a/b", "token_file": "/t"}}), "user"),
    ("github without ref", _one_action({"runner": "github_actions", "github_actions": {"repository": "o/r", "workflow": "w.yml", "token_file": "/t"}}), "ref"),
    ("command argv empty", _one_action({"runner": "command", "command": {"argv": []}}), "argv"),
    ("kubernetes wait a string", _one_action({"runner": "kubernetes", "kubernetes": {"wait": "yes"}}), "wait"),
    ("on_lost unknown", _one_action({"runner": "simulated", "policy": {"on_lost": "ignore"}}), "on_lost"),
    ("per_target 0", _one_action({"runner": "simulated", "concurrency": {"per_target": 0}}), "per_target"),
    ("targets not a list", _one_action({"runner": "simulated", "targets": "apps/*"}), "targets"),
    ("targets empty", _one_action({"runner": "simulated", "targets": []}), "targets"),
    ("max_attempts above 100", _one_action({"runner": "simulated", "policy": {"max_attempts": 101}}), "max_attempts"),
    ("per_target above 10000", _one_action({"runner": "simulated", "concurrency": {"per_target": 10001}}), "per_target"),
    ("poll interval below 10 ms", _one_action({"runner": "kubernetes", "kubernetes": {"poll_interval_ms": 5}}), "poll_interval_ms"),
    ("workflow id not a string", _one_action({"runner": "github_actions", "github_actions": {"repository": "o/r", "workflow": 123, "ref": "main", "token_file": "/t"}}), "workflow"),
    ("jenkins parameter not text", _one_action({"runner": "jenkins", "jenkins": {"url": "https://j", "job": "a/b", "user": "u", "token_file": "/t", "parameters": {"N": 3}}}), "N"),
    ("runner secret without secretName", {"runnerSecrets": [{"name": "awx"}]}, "secretName"),
    ("runner secret bad name", {"runnerSecrets": [{"name": "AWX", "secretName": "a"}]}, "name"),
    ("runner secret unknown key", {"runnerSecrets": [{"name": "awx", "secretName": "a", "token": "x"}]}, "token"),
    ("rbac namespace invalid", {"kubernetesRunner": {"rbac": {"namespaces": ["Apps"]}}}, "namespaces"),
    ("rbac unknown key", {"kubernetesRunner": {"rbac": {"verbs": ["delete"]}}}, "verbs"),
    ("egress cidr and namespaces", {"networkPolicy": {"enabled": True, "runnerEgress": [{"cidr": "10.0.0.0/8", "namespaces": ["a"], "ports": [443]}]}}, "namespaces"),
    ("egress without ports", {"networkPolicy": {"enabled": True, "runnerEgress": [{"cidr": "10.0.0.0/8"}]}}, "ports"),
    ("egress bad cidr", {"networkPolicy": {"enabled": True, "runnerEgress": [{"cidr": "10.0.0.0", "ports": [443]}]}}, "cidr"),
    ("egress port 0", {"networkPolicy": {"enabled": True, "runnerEgress": [{"cidr": "10.0.0.0/8", "ports": [0]}]}}, "ports"),
    ("api server bad cidr", {"networkPolicy": {"kubernetesApi": {"cidr": "kubernetes.default"}}}, "cidr"),
]


@pytest.mark.parametrize("label,values,field", BAD, ids=[b[0] for b in BAD])
def test_schema_refuses_wrong_runner_values(label, values, field):
    msg = refused(values, "HelmValuesError")
    assert field in msg, msg


def test_schema_accepts_every_runner_and_exactly_100_actions():
    render({"actions": {f"a{i}": {"runner": "simulated"} for i in range(100)}})
    render({"actions": {"a" * 63: {"runner": "simulated"}, "kubernetes_no_block": {"runner": "kubernetes"}}})
    full = yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text())
    assert {a["runner"] for a in full["actions"].values()} == {
        "simulated", "http", "awx", "jenkins", "github_actions", "kubernetes", "command"}
    render(full)


def test_schema_runner_enum_matches_the_service():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    enum = schema["properties"]["actions"]["additionalProperties"]["properties"]["runner"]["enum"]
    source = (REPO / "src" / "executor" / "runners" / "mod.rs").read_text()
    m = re.search(r"pub const KINDS: \[&str; \d+\] = \[([^\]]*)\]", source)
    assert m, "runner kinds not found in src/executor/runners/mod.rs"
    assert enum == re.findall(r'"([a-z_]+)"', m.group(1))


# --- production -----------------------------------------------------------------------------------------


def test_production_catalog():
    values = yaml.safe_load(PRODUCTION.read_text())
    docs = objects(render(values))
    actions = values["actions"]
    restart = actions["restart_service"]
    assert restart["runner"] == "kubernetes" and restart["targets"] == ["apps/*"]
    assert restart["concurrency"] == {"per_target": 1}
    assert actions["rotate_config"]["runner"] == "awx"
    assert actions["health_check"]["runner"] == "http"
    assert yaml.safe_load(actions_configmap(docs)["data"]["actions.yaml"]) == {"actions": actions}
    # RBAC where restart_service's targets live, and the token to use it.
    target_namespaces = {t.split("/")[0] for t in restart["targets"]}
    assert {r["metadata"]["namespace"] for r in by_kind(docs, "Role")} == target_namespaces
    pod, main = main_container(docs)
    assert pod["automountServiceAccountToken"] is True
    # rotate_config's token comes from a mounted Secret.
    token_file = actions["rotate_config"]["awx"]["token_file"]
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    directory, _, key = token_file.rpartition("/")
    assert directory in mounts and mounts[directory]["readOnly"] is True
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[directory]["name"]]
    assert volume["secret"]["items"] == [{"key": key, "path": key}]
    for d in docs:
        if d["kind"] in ("Deployment", "ConfigMap", "Role", "RoleBinding"):
            assert k8s_errors(d) == [], d["metadata"]["name"]


def _check_actions_bin() -> str:
    gateway_bin = os.environ.get("GATEWAY_BIN", "")
    if not gateway_bin or not os.access(gateway_bin, os.X_OK):
        pytest.skip(f"GATEWAY_BIN={gateway_bin!r} is not an executable: `check-actions` not run (the chart checks above still ran)")
    res = subprocess.run([gateway_bin, "--help"], capture_output=True, text=True, timeout=30)
    if "check-actions" not in res.stdout + res.stderr:
        pytest.skip(f"{gateway_bin} has no `check-actions` subcommand yet (an older build): the rendered catalogs are not checked by the service")
    return gateway_bin


@pytest.mark.parametrize("source", [PRODUCTION, CHART / "ci" / "full-values.yaml", None], ids=["production", "ci-full", "test-catalog"])
def test_the_service_accepts_the_rendered_catalog(source: Path | None, tmp_path: Path):
    values = yaml.safe_load(source.read_text()) if source else catalog_values()
    data = actions_configmap(objects(render(values)))["data"]["actions.yaml"]
    gateway_bin = _check_actions_bin()
    path = tmp_path / "actions.yaml"
    path.write_text(data)
    res = subprocess.run([gateway_bin, "check-actions", str(path)], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    names = sorted(values["actions"])
    m = re.search(rf"{re.escape(str(path))}: (\d+) actions OK \(([^)]*)\)", out)
    assert m, out
    assert int(m.group(1)) == len(names)
    assert sorted(n.strip() for n in m.group(2).split(",")) == names
