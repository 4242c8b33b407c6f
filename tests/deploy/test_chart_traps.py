"""The chart's first-install traps (issue 14): each test here fails on the chart as it was before.

- auth on by default needed a Secret nobody had created (pod stuck in ContainerCreating): the chart
  now creates one once, with a generated admin token that NOTES.txt tells how to read;
- NOTES.txt called POST /v1/jobs without a token (401);
- Chart.yaml's icon pointed at a file that did not exist;
- SQLite lived on an emptyDir by default (jobs lost when the pod moved);
- the alert rules could be shipped without the ServiceMonitor (AutomationGatewayDown for ever);
- no Ingress / HTTPRoute; the helm test image was a fixed docker.io busybox.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import CHART, CI_VALUES, NAMESPACE, REPO, by_kind, k8s_errors, need_tool, objects, one, render

POSTGRES = {"database": {"type": "postgres", "postgres": {"existingSecret": "db"}}}


def notes(rendered: dict[str, str]) -> str:
    return next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def volumes(docs: list[dict]) -> dict[str, dict]:
    return {v["name"]: v for v in pod_spec(docs)["volumes"]}


def secret_data(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


# --- 1. the tokens Secret ------------------------------------------------------------------------

def test_default_install_creates_the_tokens_secret_the_pod_mounts():
    docs = objects(render({}))
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == "automation-gateway-generated-tokens"
    # Created once and never deleted by Helm: an uninstall/reinstall keeps the token people use.
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    vol = volumes(docs)["auth-tokens"]["secret"]
    assert vol["secretName"] == secret["metadata"]["name"]
    assert vol["items"] == [{"key": "tokens.yaml", "path": "tokens.yaml"}]
    assert set(secret["data"]) == {"tokens.yaml", "admin-token"}
    main = pod_spec(docs)["containers"][0]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["GATEWAY_AUTH_TOKENS_FILE"] == "/etc/automation-gateway/tokens/tokens.yaml"
    assert k8s_errors(secret) == []


def test_the_generated_tokens_file_stores_the_sha256_of_the_admin_token():
    data = secret_data(one(objects(render({})), "Secret"))
    token = data["admin-token"]
    assert re.fullmatch(r"agw_[A-Za-z0-9]{48}", token), "a long random token, shaped like `automation-gateway token`'s"
    tokens = yaml.safe_load(data["tokens.yaml"])
    assert list(tokens) == ["tokens"] and len(tokens["tokens"]) == 1
    entry = tokens["tokens"][0]
    # Exactly the fields the service accepts (it refuses unknown ones).
    assert set(entry) <= {"name", "sha256", "actions", "scope", "can_read", "can_cancel"}
    assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert entry["actions"] == ["*"] and entry["can_read"] is True and entry["can_cancel"] is True
    assert token not in data["tokens.yaml"], "the tokens file must hold only the hash"


def test_every_render_without_a_cluster_generates_a_fresh_token():
    # Offline renders cannot `lookup`, so no token is baked into the chart: two renders differ.
    a = secret_data(one(objects(render({})), "Secret"))["admin-token"]
    b = secret_data(one(objects(render({})), "Secret"))["admin-token"]
    assert a != b


def test_an_existing_secret_is_used_and_nothing_is_generated():
    docs = objects(render({"auth": {"existingSecret": "my-tokens"}}))
    assert not by_kind(docs, "Secret")
    assert volumes(docs)["auth-tokens"]["secret"]["secretName"] == "my-tokens"


def test_no_tokens_secret_without_auth():
    docs = objects(render({"auth": {"enabled": False}}))
    assert not by_kind(docs, "Secret")
    assert "auth-tokens" not in volumes(docs)


def test_generated_secret_follows_the_release_name_and_key():
    docs = objects(render({"auth": {"secretKey": "api-tokens.yaml"}}, name="ops", namespace="tools"))
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == "ops-automation-gateway-generated-tokens"
    assert secret["metadata"]["namespace"] == "tools"
    assert set(secret["data"]) == {"api-tokens.yaml", "admin-token"}
    assert volumes(docs)["auth-tokens"]["secret"]["secretName"] == "ops-automation-gateway-generated-tokens"


def test_the_generated_secret_never_takes_the_name_users_created_by_hand():
    # Until chart 0.2.0 users created `automation-gateway-tokens` themselves. A generated Secret of that
    # name would overwrite theirs wherever `lookup` is blind (Argo CD), so it has a name of its own.
    secret = one(objects(render({})), "Secret")
    assert secret["metadata"]["name"] != "automation-gateway-tokens"
    long_release = "r" * 60
    name = one(objects(render({}, name=long_release)), "Secret")["metadata"]["name"]
    assert len(name) <= 63 and name.endswith("-generated-tokens")


def test_the_admin_token_key_cannot_be_the_tokens_file_key():
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError) as exc:
        render({"auth": {"secretKey": "admin-token"}})
    assert "auth.secretKey" in str(exc.value)


def test_an_existing_generated_secret_is_kept_as_it_is(tmp_path: Path):
    """What `lookup` finds on an upgrade is reused byte for byte (never a new token). Offline renders
    cannot look up, so the chart's helper is fed a Secret as `lookup` returns it, in a copy of the chart."""
    import helm_python as helm

    chart = tmp_path / "automation-gateway"
    shutil.copytree(CHART, chart)
    kept = {"tokens.yaml": base64.b64encode(b"tokens: []\n").decode(), "admin-token": base64.b64encode(b"agw_old").decode()}
    probe = (
        "{{- $existing := dict \"metadata\" (dict \"name\" \"automation-gateway-generated-tokens\") \"data\" (fromJson "
        + json.dumps(json.dumps(kept))
        + ") }}\n{{- include \"automation-gateway.tokensSecretData\" (list . $existing) }}\n"
    )
    (chart / "templates" / "zz-probe.yaml").write_text(probe)
    with helm.Chart.load(str(chart)) as c:
        out = c.render({}, name="automation-gateway", namespace=NAMESPACE)
    assert yaml.safe_load(out["automation-gateway/templates/zz-probe.yaml"]) == kept


# --- the rendered tokens file works with the real service -----------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, token: str | None = None, body: dict | None = None) -> int:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None, headers=headers,
                                 method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_service_accepts_the_generated_tokens_file_and_admin_token(tmp_path: Path):
    gateway_bin = os.environ.get("GATEWAY_BIN", "")
    if not gateway_bin or not os.access(gateway_bin, os.X_OK):
        pytest.fail(f"GATEWAY_BIN={gateway_bin!r} is not an executable: set it to the built service binary")
    data = secret_data(one(objects(render({})), "Secret"))
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(data["tokens.yaml"])
    port = _free_port()
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen(
        [gateway_bin, "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite://{tmp_path}/ag.db?mode=rwc",
             "GATEWAY_LISTEN": f"127.0.0.1:{port}", "GATEWAY_AUTH_TOKENS_FILE": str(tokens),
             "GATEWAY_SIM_DURATION_MS": "10", "RUST_LOG": "info"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _request(base + "/readyz") == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.2)
        job = {"action": "health_check", "target": "demo", "requested_by": "chart-test@example.com"}
        assert _request(base + "/v1/jobs", body=job) == 401
        assert _request(base + "/v1/jobs", token="agw_wrong", body=job) == 401
        assert _request(base + "/v1/jobs", token=data["admin-token"], body=job) in (200, 201, 202)
        assert _request(base + "/v1/jobs", token=data["admin-token"]) == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# --- 2. NOTES.txt shows the token header ----------------------------------------------------------

def _curl_v1_lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if "curl" in l and "/v1/" in l]


def test_notes_send_the_generated_token_and_say_how_to_read_it():
    out = render({})
    text = notes(out)
    secret = one(objects(out), "Secret")
    calls = _curl_v1_lines(text)
    assert calls, text
    assert all('-H "authorization: Bearer $TOKEN"' in l for l in calls), calls
    m = re.search(r"export TOKEN=\"\$\(kubectl -n (\S+) get secret (\S+) -o jsonpath='\{\.data\.([\w-]+)\}' \| base64 -d\)\"", text)
    assert m, text
    assert m.group(1) == NAMESPACE and m.group(2) == secret["metadata"]["name"] and m.group(3) in secret["data"]
    assert m.group(3) == "admin-token"


def test_notes_with_an_existing_secret_still_send_a_token():
    text = notes(render({"auth": {"existingSecret": "my-tokens"}}))
    calls = _curl_v1_lines(text)
    assert calls and all("authorization: Bearer $TOKEN" in l for l in calls)
    assert "export TOKEN=" in text and "my-tokens" in text
    assert "jsonpath" not in text, "an existing tokens file holds hashes only: there is nothing to read back"


def test_notes_without_auth_send_no_token():
    text = notes(render({"auth": {"enabled": False}}))
    assert _curl_v1_lines(text) and "Bearer" not in text


# --- 3. Chart.yaml references files that exist ----------------------------------------------------

def _repo_paths(urls: list[str], home: str) -> list[str]:
    """Repository-relative paths of URLs that point into this repository (raw files or blob/tree views)."""
    m = re.match(r"https://github\.com/([^/]+)/([^/]+)$", home.rstrip("/"))
    assert m, f"home {home!r} is not a GitHub repository URL"
    owner, repo = m.groups()
    prefixes = [f"https://raw.githubusercontent.com/{owner}/{repo}/main/",
                f"https://github.com/{owner}/{repo}/blob/main/", f"https://github.com/{owner}/{repo}/tree/main/"]
    paths = []
    for url in urls:
        for p in prefixes:
            if url.startswith(p):
                paths.append(url[len(p):].split("#", 1)[0])
    return paths


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_every_repository_path_referenced_by_chart_yaml_exists():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    paths = _repo_paths(_strings(chart), chart["home"])
    assert "docs/icon.svg" in paths, "the icon should be served from the repository"
    missing = [p for p in paths if not (REPO / p).is_file()]
    assert not missing, f"Chart.yaml references files absent from the repository: {missing}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in _repo_paths(_strings(values), chart["home"]) if not (REPO / p).is_file()]
    assert not missing, f"values.yaml references files absent from the repository: {missing}"


def test_the_icon_is_a_small_svg():
    import xml.etree.ElementTree as ET

    icon = REPO / "docs" / "icon.svg"
    root = ET.parse(icon).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox")
    assert icon.stat().st_size < 10_000


# --- 4. persistence ------------------------------------------------------------------------------

def test_default_install_keeps_sqlite_on_a_persistent_volume_claim():
    docs = objects(render({}))
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "automation-gateway-data"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in pvc["spec"], "empty storageClass: the cluster default"
    assert volumes(docs)["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "automation-gateway-data"}}
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert k8s_errors(pvc) == []


def test_persistence_values_size_class_and_existing_claim():
    docs = objects(render({"database": {"sqlite": {"persistence": {"size": "5Gi", "storageClassName": "gp3",
                                                                     "accessModes": ["ReadWriteOncePod"]}}}}))
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "gp3"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOncePod"]
    docs = objects(render({"database": {"sqlite": {"persistence": {"existingClaim": "old-data"}}}}))
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert volumes(docs)["data"]["persistentVolumeClaim"] == {"claimName": "old-data"}


def test_emptydir_is_an_explicit_choice():
    docs = objects(render({"database": {"sqlite": {"persistence": {"enabled": False}}}}))
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert volumes(docs)["data"]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "Recreate"
    assert "emptyDir (lost with the pod)" in notes(render({"database": {"sqlite": {"persistence": {"enabled": False}}}}))


def test_postgres_rolls_and_has_no_data_volume():
    docs = objects(render({**POSTGRES, "replicaCount": 2}))
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert "data" not in volumes(docs)
    strategy = one(docs, "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"


@pytest.mark.parametrize("values", [{"replicaCount": 2}, {"autoscaling": {"enabled": True}}], ids=["replicas", "hpa"])
def test_sqlite_with_more_than_one_pod_is_refused_also_on_a_claim(values):
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError) as exc:
        render({**values, "database": {"sqlite": {"persistence": {"enabled": True, "accessModes": ["ReadWriteMany"]}}}})
    assert "sqlite supports exactly one replica" in str(exc.value)


# --- 5. alert rules need the ServiceMonitor --------------------------------------------------------

def test_rules_without_the_service_monitor_are_refused():
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError) as exc:
        render({"serviceMonitor": {"enabled": False}})
    msg = str(exc.value)
    assert "serviceMonitor.enabled" in msg and "prometheusRule.enabled" in msg and "AutomationGatewayDown" in msg


def test_service_monitor_without_rules_and_neither_are_fine():
    kinds = {d["kind"] for d in objects(render({"prometheusRule": {"enabled": False}}))}
    assert "ServiceMonitor" in kinds and "PrometheusRule" not in kinds
    kinds = {d["kind"] for d in objects(render({"prometheusRule": {"enabled": False}, "serviceMonitor": {"enabled": False}}))}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


# --- 6. Ingress and HTTPRoute --------------------------------------------------------------------

INGRESS = {"enabled": True, "className": "nginx",
           "hosts": [{"host": "automation.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
           "tls": [{"secretName": "ag-tls", "hosts": ["automation.example.com"]}]}
ROUTE = {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
         "hostnames": ["automation.example.com"], "timeouts": {"request": "0s"}}


def test_ingress_and_httproute_are_off_by_default():
    kinds = {d["kind"] for d in objects(render({}))}
    assert not kinds & {"Ingress", "HTTPRoute"}


def test_ingress_routes_to_the_service_with_sse_friendly_defaults():
    docs = objects(render({"ingress": INGRESS}))
    ing = one(docs, "Ingress")
    svc = one(docs, "Service")
    assert ing["apiVersion"] == "networking.k8s.io/v1"
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == INGRESS["tls"]
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == "automation.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": svc["metadata"]["name"], "port": {"name": "http"}}
    assert any(p["name"] == "http" for p in svc["spec"]["ports"])
    # Event streams: no proxy buffering, a read timeout longer than the SSE heartbeat.
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 15
    assert k8s_errors(ing) == []


def test_ingress_needs_hosts():
    import helm_python as helm

    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as exc:
        render({"ingress": {"enabled": True}})
    assert "hosts" in str(exc.value)


def _gateway_api_errors(doc: dict) -> list[str]:
    """Validate with the @kubernetes-models/gateway-api model (installed by run.sh)."""
    npm_dir = Path(os.environ.get("AG_NPM_DIR", Path.home() / ".cache" / "automation-gateway-deploy-npm"))
    model = npm_dir / "node_modules" / "@kubernetes-models" / "gateway-api" / "gateway.networking.k8s.io" / "v1" / f"{doc['kind']}.mjs"
    if not model.is_file():
        pytest.fail(f"{model} is missing: tests/deploy/run.sh installs @kubernetes-models/gateway-api into {npm_dir}")
    script = (
        f"import {{ {doc['kind']} }} from {json.dumps(model.as_uri())};\n"
        "import { readFileSync } from 'node:fs';\n"
        f"try {{ new {doc['kind']}(JSON.parse(readFileSync(0, 'utf8'))).validate(); }}\n"
        "catch (e) { console.log(String(e && e.message ? e.message : e)); process.exit(1); }\n"
    )
    clean = {k: v for k, v in doc.items() if k != "__template__"}
    res = subprocess.run([need_tool("node"), "--input-type=module", "-e", script], input=json.dumps(clean),
                         capture_output=True, text=True, timeout=60)
    return [] if res.returncode == 0 else [res.stdout + res.stderr]


def test_httproute_routes_to_the_service_and_passes_the_gateway_api_schema():
    docs = objects(render({"httpRoute": ROUTE}))
    route = one(docs, "HTTPRoute")
    svc = one(docs, "Service")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == ROUTE["parentRefs"]
    assert route["spec"]["hostnames"] == ["automation.example.com"]
    rule = route["spec"]["rules"][0]
    assert rule["backendRefs"] == [{"name": svc["metadata"]["name"], "port": svc["spec"]["ports"][0]["port"]}]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["timeouts"] == {"request": "0s"}
    assert _gateway_api_errors(route) == []


def test_the_gateway_api_validator_refuses_a_bad_route():
    route = one(objects(render({"httpRoute": ROUTE})), "HTTPRoute")
    route["spec"]["hostnames"] = ["Not A Host"]
    assert _gateway_api_errors(route), "the validator must refuse an invalid hostname"


def test_httproute_needs_parent_refs():
    import helm_python as helm

    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as exc:
        render({"httpRoute": {"enabled": True}})
    assert "parentRefs" in str(exc.value)


@pytest.mark.parametrize("name", ["ingress-values.yaml", "httproute-values.yaml"])
def test_ci_scenarios_render_the_routes(name):
    values = yaml.safe_load((CHART / "ci" / name).read_text())
    docs = objects(render(values))
    kind = "Ingress" if name.startswith("ingress") else "HTTPRoute"
    doc = one(docs, kind)
    assert (k8s_errors(doc) if kind == "Ingress" else _gateway_api_errors(doc)) == []


def test_production_network_policy_lets_callers_and_the_ingress_controller_in():
    values = yaml.safe_load((REPO / "apps" / "automation-gateway" / "values-production.yaml").read_text())
    peers = values["networkPolicy"]["ingressFrom"]
    names = [((p.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name") for p in peers]
    assert "ingress-nginx" in names, "the ingress controller's namespace"
    assert len([n for n in names if n and n != "ingress-nginx"]) >= 1, "at least one caller namespace"
    np = next(d for d in by_kind(objects(render(values)), "NetworkPolicy") if d["metadata"]["name"] == "automation-gateway")
    api_peers = np["spec"]["ingress"][0]["from"]
    for p in peers:
        assert p in api_peers
    assert k8s_errors(np) == []


# --- 8. helm test image --------------------------------------------------------------------------

def _test_image(values: dict) -> str:
    return one(objects(render(values)), "Pod")["spec"]["containers"][0]["image"]


def test_helm_test_image_is_configurable():
    assert _test_image({}) == "docker.io/library/busybox:1.36.1"
    assert _test_image({"tests": {"image": {"registry": "registry.corp.example:5000/mirror"}}}) == \
        "registry.corp.example:5000/mirror/library/busybox:1.36.1"
    digest = "sha256:" + "ab" * 32
    assert _test_image({"tests": {"image": {"registry": "", "repository": "quay.io/tools/busybox", "tag": "1.37", "digest": digest}}}) == \
        f"quay.io/tools/busybox@{digest}"
    assert _test_image({"tests": {"image": {"tag": "1.37.0"}}}) == "docker.io/library/busybox:1.37.0"
    # The service image keeps its own reference (no registry key there).
    main = pod_spec(objects(render({})))["containers"][0]["image"]
    assert main == "ghcr.io/example-org/automation-gateway:0.1.0"


def test_helm_test_image_registry_is_checked():
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as exc:
        render({"tests": {"image": {"registry": "https://registry.example.com"}}})
    assert "registry" in str(exc.value)


# --- 9. every values file renders --------------------------------------------------------------------

def test_ci_values_cover_the_new_scenarios():
    names = {p.name for p in CI_VALUES}
    assert {"ingress-values.yaml", "httproute-values.yaml", "sqlite-emptydir-values.yaml", "sqlite-persistence-values.yaml"} <= names
