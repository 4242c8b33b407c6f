"""checkov on the rendered chart (every scenario) and on the Dockerfile: no failed check without a
written reason in charts/automation-gateway/README.md."""
from __future__ import annotations

import json
import os
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


# The distroless static base (gcr.io/distroless/static-debian12), "around 2 MiB" in the distroless
# project's README; the image is this layer plus the one holding the static binary.
DISTROLESS_STATIC_BYTES = 2 * 1024 * 1024
# Where `make release-gateway` leaves the static (static-pie) release binary in this workplace.
RELEASE_BINARY = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/ag-target")) / "x86_64-unknown-linux-gnu" / "release" / "automation-gateway"


def _stages(text: str) -> list[tuple[str, str, str]]:
    """(image, stage name, body) of each FROM of a Dockerfile."""
    parts = re.split(r"^(FROM\s+.+)$", text, flags=re.M)
    out = []
    for head, body in zip(parts[1::2], parts[2::2]):
        m = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", head, re.I)
        out.append((m.group(1), m.group(2) or "", body))
    return out


def test_dockerfile_release_image():
    text = (REPO / "Dockerfile").read_text()
    stages = _stages(text)
    # Every base image pinned by tag and digest: the tag says what it is, the digest which one.
    for image, name, _ in stages:
        assert re.fullmatch(r"[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}", image), f"stage {name}: {image} is not tag@sha256:digest"
    runtime, _, body = stages[-1]
    assert runtime.startswith("gcr.io/distroless/static-debian12:nonroot@"), f"runtime base is {runtime}"
    users = re.findall(r"^USER\s+(\S+)", body, re.M)
    assert users and users[-1] in ("65532:65532", "65532", "nonroot", "nonroot:nonroot"), users
    # Nothing runs a shell at build or run time in the runtime stage (there is none): no RUN, and the
    # entry point, command and any healthcheck are in exec form.
    assert not re.search(r"^RUN\b", body, re.M), "the distroless runtime stage has no shell for RUN"
    for instr in ("ENTRYPOINT", "CMD", "HEALTHCHECK CMD"):
        for m in re.finditer(rf"^{instr}\s+(.+)$", body, re.M):
            assert m.group(1).startswith("["), f"{instr} must use the exec form: {m.group(0)}"
    # The binary needs no libc from the image: glibc linked statically, as `make release-gateway`.
    build_body = stages[0][2]
    assert 'RUSTFLAGS="-C target-feature=+crt-static"' in build_body
    # Multi-arch with BuildKit: the target architecture picks the Rust target, both are supported,
    # and the buildx command is documented.
    assert re.search(r"^ARG TARGETARCH$", build_body, re.M)
    assert "amd64) triple=x86_64-unknown-linux-gnu" in build_body and "arm64) triple=aarch64-unknown-linux-gnu" in build_body
    assert re.search(r"^#\s+docker buildx build --platform linux/amd64,linux/arm64\b", text, re.M)
    # The commit for `--version` reaches build.rs (the context has no .git).
    assert re.search(r"^ARG GIT_COMMIT\b", build_body, re.M) and 'GIT_COMMIT="${GIT_COMMIT}"' in build_body
    assert 'std::env::var("GIT_COMMIT")' in (REPO / "build.rs").read_text()

    # Image size estimate (printed, not asserted): the static release binary plus the base layer.
    if RELEASE_BINARY.is_file():
        size = RELEASE_BINARY.stat().st_size
        print(f"\nimage size estimate: {(size + DISTROLESS_STATIC_BYTES) / 2**20:.1f} MiB uncompressed = "
              f"static binary {size / 2**20:.1f} MiB ({RELEASE_BINARY}) + distroless static ~{DISTROLESS_STATIC_BYTES / 2**20:.0f} MiB")
    else:
        print(f"\nimage size estimate: no static release binary at {RELEASE_BINARY} (make release-gateway builds it); "
              f"base layer ~{DISTROLESS_STATIC_BYTES / 2**20:.0f} MiB")
