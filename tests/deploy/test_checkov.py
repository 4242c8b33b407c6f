"""checkov on the rendered chart (every scenario) and on the Dockerfile: no failed check without a
written reason in charts/automation-gateway/README.md."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from conftest import CHART, REPO, need_tool, objects, render, scenarios, strip_meta


def accepted() -> dict[str, str]:
    """{check id: scope} from the README's "Checkov findings that are accepted" table."""
    text = (CHART / "README.md").read_text()
    section = text.split("## Checkov findings that are accepted", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`(CKV\w+)`\s*\|\s*([^|]+?)\s*\|\s*(.+?)\s*\|$", section, re.M)
    assert rows, "no accepted-check table in the chart README"
    for cid, _, reason in rows:
        assert len(reason) > 40, f"{cid}: the reason is too short to be one"
    return {cid: scope.split()[0] for cid, scope, _ in rows}


def run_checkov(args: list[str], tmp: Path) -> list[dict]:
    res = subprocess.run([need_tool("checkov"), *args, "--compact", "--quiet", "-o", "json"],
                         capture_output=True, text=True, timeout=540, cwd=tmp)
    assert res.returncode in (0, 1), res.stderr[-2000:]
    data = json.loads(res.stdout)
    reports = data if isinstance(data, list) else [data]
    assert any(r.get("summary", {}).get("passed", 0) > 0 for r in reports), "checkov checked nothing"
    return [f for r in reports for f in r["results"]["failed_checks"]]


def test_checkov_on_the_rendered_chart(tmp_path: Path):
    skip = [c for c, scope in accepted().items() if scope == "global"]
    out = tmp_path / "rendered"
    for sid, values in scenarios():
        d = out / sid.replace("/", "_")
        d.mkdir(parents=True)
        for i, doc in enumerate(objects(render(values))):
            (d / f"{i:02d}-{doc['kind'].lower()}.yaml").write_text(yaml.safe_dump(strip_meta(doc)))
    failed = run_checkov(["-d", str(out), "--framework", "kubernetes", "--skip-check", ",".join(skip)], tmp_path)
    assert not failed, [(f["check_id"], f["resource"], f["file_path"]) for f in failed]


def test_annotation_skips_are_documented():
    documented = accepted()
    for p in (CHART / "templates").rglob("*.yaml"):
        for cid in re.findall(r"checkov\.io/skip\d+:\s*(CKV\w+)=", p.read_text()):
            assert documented.get(cid) == "annotation", f"{p.name}: {cid} skipped without a README reason"


def test_checkov_on_the_dockerfile(tmp_path: Path):
    skip = [c for c, scope in accepted().items() if scope == "Dockerfile"]
    failed = run_checkov(["-f", str(REPO / "Dockerfile"), "--framework", "dockerfile", "--skip-check", ",".join(skip)], tmp_path)
    assert not failed, [(f["check_id"], f["check_name"]) for f in failed]


def test_dockerfile_shape():
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert len(froms) >= 2, "multi-stage build expected"
    assert "cargo build --release --locked" in text
    runtime = froms[-1][0]
    assert "distroless" in runtime and ":latest" not in runtime
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "runtime must run as a numeric non-root user"
    assert re.search(r"^EXPOSE\s+8000\b", text, re.M)
    assert re.search(r'^ENTRYPOINT\s+\["/usr/local/bin/automation-gateway"\]', text, re.M), "exec form, no shell"
    for secret_word in ("PASSWORD", "TOKEN=", "postgres://"):
        assert secret_word not in text
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "target" in ignore and ".git" in ignore
