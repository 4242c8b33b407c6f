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
