"""Release artefacts: LICENSE, CHANGELOG.md and semantic versions that agree, and the release workflow
(.github/workflows/release.yml) checked by actionlint and for what a release must do."""
from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

from conftest import CHART, REPO, need_tool

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
NOTES_SCRIPT = REPO / ".github" / "scripts" / "changelog-notes.sh"
# semver.org's regular expression for a version (2.0.0).
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
RELEASE_HEADING = re.compile(r"^## \[([^\]]+)\] - (\d{4}-\d{2}-\d{2})$", re.M)


def cargo_version() -> str:
    return tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]


def chart() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def changelog() -> str:
    return (REPO / "CHANGELOG.md").read_text()


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


# --- LICENSE ------------------------------------------------------------------------------------


def test_license_is_the_full_apache_2_text_the_crate_declares():
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    assert cargo["workspace"]["package"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    for needle in (
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ):
        assert needle in text, f"LICENSE lacks {needle!r}: not the full Apache-2.0 text"
    canonical = Path("/usr/share/common-licenses/Apache-2.0")
    if canonical.is_file():
        # Same words as the distribution's copy (whitespace aside).
        assert text.split() == canonical.read_text().split(), "LICENSE differs from the Apache-2.0 text"
    assert chart()["annotations"]["artifacthub.io/license"] == "Apache-2.0"
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (REPO / "Dockerfile").read_text()


# --- Versions -----------------------------------------------------------------------------------


def test_versions_are_semantic_and_agree():
    version = cargo_version()
    assert SEMVER.match(version), f"Cargo.toml version {version!r} is not semver"
    meta = chart()
    assert SEMVER.match(str(meta["version"])), f"Chart.yaml version {meta['version']!r} is not semver"
    assert str(meta["appVersion"]) == version, (
        f"Chart.yaml appVersion {meta['appVersion']!r} != Cargo.toml version {version!r}"
    )
    released = RELEASE_HEADING.findall(changelog())
    assert released, "CHANGELOG.md has no release heading '## [X.Y.Z] - YYYY-MM-DD'"
    newest = released[0][0]
    assert newest == version, f"newest CHANGELOG.md release {newest!r} != Cargo.toml version {version!r}"
    print(f"\nversion {version}: Cargo.toml, Chart.yaml appVersion (chart {meta['version']}), CHANGELOG.md")


def test_changelog_is_keep_a_changelog():
    text = changelog()
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text and "semver.org" in text
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "[Unreleased]", "the first section must be [Unreleased]"
    released = RELEASE_HEADING.findall(text)
    assert len(released) == len(headings) - 1, f"malformed release headings: {headings[1:]}"
    versions = [v for v, _ in released]
    for v in versions:
        assert SEMVER.match(v), f"CHANGELOG.md heading {v!r} is not semver"
    key = [tuple(int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", v).groups()) for v in versions]
    assert key == sorted(key, reverse=True) and len(set(key)) == len(key), "releases must be newest first, once each"
    dates = [d for _, d in released]
    assert dates == sorted(dates, reverse=True), "release dates must be newest first"
    allowed = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    kinds = set(re.findall(r"^### (.+)$", text, re.M))
    assert kinds <= allowed, f"unknown change types: {kinds - allowed}"
    for label in ["Unreleased", *versions]:
        assert re.search(rf"^\[{re.escape(label)}\]: https://", text, re.M), f"no link reference for [{label}]"


def test_release_notes_are_the_versions_changelog_section(tmp_path: Path):
    version = cargo_version()
    res = subprocess.run([str(NOTES_SCRIPT), version, str(REPO / "CHANGELOG.md")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    notes = res.stdout
    assert notes.strip() and "### Added" in notes
    assert "## [" not in notes, "the notes run into another section"
    assert not re.search(r"^\[[^\]]+\]: ", notes, re.M), "the notes carry the link references"
    assert "[Unreleased]" not in notes
    # A tag without a section stops the release instead of publishing blank notes.
    res = subprocess.run([str(NOTES_SCRIPT), "99.0.0", str(REPO / "CHANGELOG.md")], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "no section" in res.stderr
    # Dots are literal: 0.1.0 never matches a heading 0x1y0.
    fake = tmp_path / "CHANGELOG.md"
    fake.write_text("# Changelog\n\n## [0x1y0] - 2026-01-01\n\n- other\n")
    res = subprocess.run([str(NOTES_SCRIPT), "0.1.0", str(fake)], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0


# --- Release workflow ---------------------------------------------------------------------------


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    args = [need_tool("actionlint"), "-no-color", "-oneline"]
    if shutil.which("shellcheck") is None:
        args += ["-shellcheck", ""]
    return subprocess.run([*args, *map(str, files)], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_actionlint_passes_on_every_workflow():
    need_tool("shellcheck")  # so the run: scripts are checked too
    files = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
    assert WORKFLOW in files
    res = actionlint(*files)
    assert res.returncode == 0, res.stdout + res.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path):
    # The check is live: a copy with an invalid permission and an unknown job output fails it.
    broken = WORKFLOW.read_text().replace("packages: write", "packages: writ", 1)
    broken = broken.replace("needs.image.outputs.digest", "needs.image.outputs.digestt", 1)
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    (wf / "release.yml").write_text(broken)
    res = actionlint(wf / "release.yml")
    assert res.returncode != 0
    assert "writ" in res.stdout and "digestt" in res.stdout, res.stdout


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _uses(job: dict, action: str) -> dict:
    found = [s for s in _steps(job) if str(s.get("uses", "")).split("@")[0] == action]
    assert found, f"no step uses {action}"
    return found[0]


def _run(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) for s in _steps(job))


def test_release_workflow_shape():
    wf = workflow()
    on = wf.get("on", wf.get(True))  # PyYAML reads the key `on` as True
    assert on == {"push": {"tags": ["v*.*.*"]}}
    assert wf["permissions"] == {}, "default permissions must be none; each job asks for its own"
    jobs = wf["jobs"]
    assert set(jobs) == {"test", "image", "sign", "chart", "release"}

    perms = {name: job.get("permissions") for name, job in jobs.items()}
    for name, p in perms.items():
        assert isinstance(p, dict), f"job {name} has no explicit permissions"
        assert "write-all" not in str(p)
    assert perms["test"] == {"contents": "read"}
    assert perms["image"] == {"contents": "read", "packages": "write"}
    assert perms["sign"] == {"packages": "write", "id-token": "write"}
    assert perms["chart"] == {"contents": "read", "packages": "write"}
    assert perms["release"] == {"contents": "write"}

    test = jobs["test"]
    pg = test["services"]["postgres"]
    assert re.search(r"postgres:\d+[^@]*@sha256:[0-9a-f]{64}$", pg["image"])
    assert pg["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust" and "5432:5432" in pg["ports"]
    rust = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    assert f"rustup toolchain install {rust} " in _run(test) and f"rustup default {rust}" in _run(test)
    assert re.search(r"^\s*make test\s*$", _run(test), re.M)
    assert "changelog-notes.sh" in _run(test), "the tag's changelog section is checked before anything is pushed"

    image = jobs["image"]
    assert image["needs"] == "test"
    _uses(image, "docker/setup-qemu-action")
    _uses(image, "docker/setup-buildx-action")
    login = _uses(image, "docker/login-action")["with"]
    assert login["registry"] == "ghcr.io" and login["password"] == "${{ secrets.GITHUB_TOKEN }}"
    meta = _uses(image, "docker/metadata-action")
    build = _uses(image, "docker/build-push-action")["with"]
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["push"] is True and build["sbom"] is True and build["provenance"] == "mode=max"
    assert build["tags"] == f"${{{{ steps.{meta['id']}.outputs.tags }}}}"
    assert "GIT_COMMIT=${{ github.sha }}" in build["build-args"]
    assert image["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"

    sign = jobs["sign"]
    assert sign["needs"] == "image"
    _uses(sign, "sigstore/cosign-installer")
    assert re.search(r'cosign sign --yes "\$\{IMAGE\}@\$\{DIGEST\}"', _run(sign)), "sign the pushed digest, keyless"
    assert "--key" not in _run(sign)

    chart_job = jobs["chart"]
    assert "helm package charts/automation-gateway" in _run(chart_job)
    assert re.search(r'helm push \S+ "oci://ghcr\.io/\$\{GITHUB_REPOSITORY_OWNER,,\}/charts"', _run(chart_job))

    release = jobs["release"]
    assert set(release["needs"]) == {"image", "sign", "chart"}
    assert ".github/scripts/changelog-notes.sh" in _run(release)
    assert "gh release create" in _run(release) and "--notes-file" in _run(release)


def test_every_action_is_pinned_to_a_commit_sha():
    for name, job in workflow()["jobs"].items():
        for step in _steps(job):
            uses = step.get("uses")
            if not uses or uses.startswith("./"):
                continue
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses), f"{name}: {uses} is not pinned to a commit SHA"
    # The release each SHA stands for is named beside it, for the reviewer of an update.
    for line in WORKFLOW.read_text().splitlines():
        if re.search(r"uses: \S+@[0-9a-f]{40}", line):
            assert re.search(r"# v\d+\.\d+\.\d+$", line), f"no release comment: {line.strip()}"
