"""The README stands alone: every file it points a user to exists in the repository, its links and
runbook anchors resolve, and it never sends anyone to documents that are not shipped (the
development-time contract or a sibling `shared/` folder)."""

from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "charts/automation-gateway/README.md", "apps/automation-gateway/README.md"]
NOT_SHIPPED = re.compile(r"CONTRACT\.md|\.\./shared|shared/schemas|/work/shared")


def tracked_top_level() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {line.split("/", 1)[0] for line in out.splitlines() if line}


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def exists(path: str) -> bool:
    path = path.rstrip("/")
    if any(c in path for c in "*?["):
        return bool(glob.glob(str(REPO / path)))
    return (REPO / path).exists()


@pytest.mark.parametrize("doc", DOCS)
def test_no_reference_to_documents_outside_the_repository(doc):
    text = (REPO / doc).read_text()
    bad = sorted({m.group(0) for m in NOT_SHIPPED.finditer(text)})
    assert not bad, f"{doc} points outside the repository: {bad}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_resolves(doc):
    base = (REPO / doc).parent
    text = (REPO / doc).read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        file = (base / path).resolve()
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(target)
    assert not broken, f"{doc}: broken links {broken}"


def test_every_repository_path_the_readme_names_exists():
    top = tracked_top_level() | {"compose.yaml", "LICENSE", "CHANGELOG.md", ".github"}
    text = (REPO / "README.md").read_text()
    missing = []
    for token in set(re.findall(r"`([^`\s]+)`", text)):
        if "<" in token or "{" in token or token.startswith(("/", "http", ".../")):
            continue
        first = token.split("/", 1)[0]
        if first not in top or first == token and "." not in token:
            continue
        if not exists(token):
            missing.append(token)
    assert not missing, f"README.md names files that are not in the repository: {sorted(missing)}"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json_keys(fragment: str) -> set[str]:
    return set(re.findall(r'"([a-z_]+)":', fragment))


def test_try_it_shows_what_the_service_really_answers(tmp_path):
    """The "Try it" examples' answers have the fields the real binary returns: /readyz carries
    `auth`, and a job read back has every field of the example (no more, no fewer)."""
    import json
    import os
    import time
    import urllib.request

    binary = os.environ.get("GATEWAY_BIN", "")
    if not (binary and os.access(binary, os.X_OK)):
        pytest.fail(f"GATEWAY_BIN={binary!r} is not an executable: set it to the built service binary")
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Try it"):text.index("## Quick start with Docker Compose")]
    readyz_line = next(line for line in section.splitlines() if line.startswith("curl -s localhost:8000/readyz"))
    job_example = section[section.index("# Status of one job."):section.index("# List, newest first")]
    job_example = "\n".join(l for l in job_example.splitlines() if l.startswith("# ") and '":' in l)
    # Top-level fields only: the example's nested objects (parameters, result) are its own.
    example_fields = _json_keys(re.sub(r"\{[^{}]*\}", "{}", job_example.replace("\n# ", "").lstrip("# ")[1:]))

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "DATABASE_URL"}
    env.update(GATEWAY_LISTEN=f"127.0.0.1:{port}", DATABASE_URL=f"sqlite://{tmp_path}/try.db?mode=rwc",
               GATEWAY_SIM_DURATION_MS="10", GATEWAY_SIM_FAILURE_RATE="0")
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                readyz = json.load(urllib.request.urlopen(base + "/readyz", timeout=2))
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the gateway did not become ready: " + (tmp_path / "gateway.log").read_text()[-2000:])
        body = json.dumps({"action": "restart_service", "target": "demo-api", "requested_by": "student@example.com",
                           "parameters": {"service": "demo-api"}}).encode()
        req = urllib.request.Request(base + "/v1/jobs", data=body, headers={"content-type": "application/json"})
        job_id = json.load(urllib.request.urlopen(req, timeout=5))["job_id"]
        job = json.load(urllib.request.urlopen(f"{base}/v1/jobs/{job_id}?wait=10s", timeout=15))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert set(readyz) <= _json_keys(readyz_line), f"/readyz answers {readyz}; the README shows: {readyz_line}"
    assert job["status"] == "SUCCESS"
    assert example_fields == set(job), (
        f"README GET example fields differ from the real answer: missing {set(job) - example_fields}, "
        f"extra {example_fields - set(job)}")
