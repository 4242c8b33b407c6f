"""Shared helpers for the deployment-bundle tests (run through tests/deploy/run.sh).

Nothing here skips: a missing tool or input is a test failure with a message that says what is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "automation-gateway"
APPS_VALUES = sorted((REPO / "apps" / "automation-gateway").glob("values*.yaml"))
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
# CI runs on a fresh clone with shared/ beside the repository.
SHARED_SCHEMAS = Path(os.environ.get("SHARED_SCHEMAS", REPO.parent / "shared" / "schemas"))
CRD_DIR = SHARED_SCHEMAS / "crds"
RELEASE = "automation-gateway"
NAMESPACE = "automation"

CRD_INDEX = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com/servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): "monitoring.coreos.com/alertmanagerconfig_v1alpha1.json",
    ("argoproj.io/v1alpha1", "Application"): "argoproj.io/application_v1alpha1.json",
    ("argoproj.io/v1alpha1", "AppProject"): "argoproj.io/appproject_v1alpha1.json",
}


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"required tool {name!r} is not on PATH (tests/deploy/run.sh installs it)")
    return path


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def scenarios() -> list[tuple[str, dict]]:
    """(id, values) for: chart defaults, every apps/automation-gateway values file, every chart ci/ file."""
    out = [("defaults", {})]
    for p in APPS_VALUES:
        out.append((f"apps/{p.name}", load_yaml(p) or {}))
    for p in CI_VALUES:
        out.append((f"ci/{p.name}", load_yaml(p) or {}))
    return out


def render(values: dict, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """Render with the real Helm v4 engine (helm-python-sdk). Returns {template path: text}, empty ones dropped."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=name, namespace=namespace)
    return {k: v for k, v in out.items() if v.strip()}


def objects(rendered: dict[str, str], include_hooks: bool = True) -> list[dict]:
    docs = []
    for key, text in sorted(rendered.items()):
        if key.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            hook = (doc.get("metadata", {}).get("annotations") or {}).get("helm.sh/hook")
            if hook and not include_hooks:
                continue
            doc.setdefault("__template__", key)
            docs.append(doc)
    return docs


def strip_meta(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__template__"}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def crd_errors(doc: dict) -> list[str]:
    """Validate a custom resource against the strict CRD JSON schemas in shared/schemas/crds,
    or, where that folder is absent (fresh clone without shared/), with the npm @kubernetes-models validators."""
    doc = strip_meta(doc)
    key = (doc["apiVersion"], doc["kind"])
    assert key in CRD_INDEX, f"no CRD schema known for {key}"
    if CRD_DIR.is_dir():
        from jsonschema import Draft202012Validator

        schema = json.loads((CRD_DIR / CRD_INDEX[key]).read_text())
        v = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        return ["/".join(map(str, e.path)) + ": " + e.message for e in v.iter_errors(doc)]
    return npm_crd_errors(doc)


def npm_crd_errors(doc: dict) -> list[str]:
    npm_dir = Path(os.environ.get("AG_NPM_DIR", Path.home() / ".cache" / "automation-gateway-deploy-npm"))
    script = REPO / "tests" / "deploy" / "crd_validate.mjs"
    if not (npm_dir / "node_modules" / "@kubernetes-models").is_dir():
        pytest.fail(
            f"{CRD_DIR} is absent and the npm fallback validators are not installed in {npm_dir} "
            "(tests/deploy/run.sh installs @kubernetes-models/* when shared/ is missing)"
        )
    res = subprocess.run(
        [need_tool("node"), str(script)],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AG_NPM_DIR": str(npm_dir)},
        cwd=npm_dir,
    )
    if res.returncode == 0:
        return []
    return [res.stdout.strip() + res.stderr.strip()]


def k8s_errors(doc: dict, version: str = "1.30") -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(strip_meta(doc), version, strict=True)
    except kubernetes_validate.ValidationError as e:  # type: ignore[attr-defined]
        return [f"{'/'.join(map(str, e.path))}: {e.message}"]
    return []


def is_custom(doc: dict) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CRD_INDEX
