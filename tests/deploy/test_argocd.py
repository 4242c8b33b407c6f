"""Argo CD app-of-apps: schema-valid Applications that point at files that exist."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import CRD_DIR, REPO, crd_errors

APPS = sorted((REPO / "apps" / "argocd-apps").glob("*.yaml"))


def test_the_expected_application_files_exist():
    names = {p.name for p in APPS}
    assert {"automation-gateway.yaml", "root.yaml"} <= names


@pytest.mark.parametrize("path", APPS, ids=lambda p: p.name)
def test_application_is_valid_and_self_managing(path: Path):
    app = yaml.safe_load(path.read_text())
    assert crd_errors(app) == []
    assert app["metadata"]["namespace"] == "argocd"
    assert "resources-finalizer.argocd.argoproj.io" in app["metadata"]["finalizers"]
    sp = app["spec"]["syncPolicy"]
    assert sp["automated"] == {"prune": True, "selfHeal": True}
    assert "ServerSideApply=true" in sp["syncOptions"]
    assert sp["retry"]["limit"] >= 1
    src = app["spec"]["source"]
    assert (REPO / src["path"]).is_dir(), f"{src['path']} does not exist"


def test_root_app_manages_the_app_folder():
    app = yaml.safe_load((REPO / "apps" / "argocd-apps" / "root.yaml").read_text())
    assert app["spec"]["source"]["path"] == "apps/argocd-apps"


def test_service_application_points_at_the_chart_and_existing_values():
    app = yaml.safe_load((REPO / "apps" / "argocd-apps" / "automation-gateway.yaml").read_text())
    src = app["spec"]["source"]
    assert src["path"] == "charts/automation-gateway"
    assert "CreateNamespace=true" in app["spec"]["syncPolicy"]["syncOptions"]
    assert app["spec"]["destination"]["namespace"] == "automation"
    for vf in src["helm"]["valueFiles"]:
        target = (REPO / src["path"] / vf).resolve()
        assert target.is_file(), f"valueFile {vf} does not exist"
        assert target.parent == (REPO / "apps" / "automation-gateway").resolve()


def test_production_values_use_postgres_and_several_replicas():
    for p in (REPO / "apps" / "automation-gateway").glob("values*.yaml"):
        v = yaml.safe_load(p.read_text())
        assert v["database"]["type"] == "postgres" and v["database"]["postgres"]["existingSecret"]
        assert v.get("replicaCount", 1) >= 2 or v.get("autoscaling", {}).get("minReplicas", 1) >= 2


def test_crd_validation_catches_wrong_values():
    app = yaml.safe_load((REPO / "apps" / "argocd-apps" / "automation-gateway.yaml").read_text())
    app["spec"]["syncPolicy"]["retry"]["limit"] = "five"
    assert crd_errors(app), "a wrongly typed field must be refused"
    if CRD_DIR.is_dir():  # the strict catalog schemas also refuse unknown fields (the npm models do not)
        app = yaml.safe_load((REPO / "apps" / "argocd-apps" / "automation-gateway.yaml").read_text())
        app["spec"]["syncPolicy"]["automated"]["selfheal"] = True
        assert crd_errors(app), "a misspelt field must be refused"
