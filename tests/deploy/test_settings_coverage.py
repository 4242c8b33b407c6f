"""Every setting the binary reads from the environment has a chart value and is documented.

The settings are collected from the source: clap's `env = "NAME"` attributes and `GATEWAY_*` string
literals read with `std::env::var`. A new setting without a value in the chart (rendered into the
Deployment's env by some values file) or without a mention in README.md fails here, and so does a
GATEWAY_* variable the chart sets that the service does not read (it would only log a warning).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import CHART, REPO, objects, one, render

SRC = REPO / "src"

# Read from the environment, but not settings of the server the chart deploys.
NOT_SERVER_SETTINGS = {
    "GATEWAY_URL": "read by the `jobs` client subcommands (which gateway to call), not by the server",
    "GATEWAY_TOKEN": "read by the `jobs` client subcommands (the caller's bearer token), not by the server",
    "GATEWAY_TOKEN_FILE": "read by the `jobs` client subcommands (the caller's token file), not by the server",
}

CLAP_ENV = re.compile(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"')
ENV_VAR = re.compile(r'\benv::var(?:_os)?\(\s*"(GATEWAY_[A-Z0-9_]+)"')


def source_settings() -> dict[str, list[str]]:
    """{variable: [files reading it]} over src/**/*.rs."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.rs")):
        text = path.read_text()
        for name in set(CLAP_ENV.findall(text)) | set(ENV_VAR.findall(text)):
            found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


def server_settings() -> list[str]:
    return sorted(n for n in source_settings() if n not in NOT_SERVER_SETTINGS)


def _full_values() -> dict:
    return yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text())


# Values files that, together, switch every setting on.
SCENARIOS = {
    "ci/full-values.yaml": _full_values,
    "defaults": dict,
    "metrics-token": lambda: {"metrics": {"requireToken": True, "scrapeToken": {"existingSecret": "scrape"}}},
}


def rendered_env() -> dict[str, set[str]]:
    """{variable: scenarios whose Deployment sets it on the service container}."""
    out: dict[str, set[str]] = {}
    for sid, values in SCENARIOS.items():
        pod = one(objects(render(values())), "Deployment")["spec"]["template"]["spec"]
        for e in pod["containers"][0]["env"]:
            out.setdefault(e["name"], set()).add(sid)
    return out


def test_the_collector_finds_the_settings():
    names = source_settings()
    # A sample across the settings modules, so a broken regex cannot pass by finding nothing.
    for expected in ("GATEWAY_LISTEN", "GATEWAY_WORKERS", "GATEWAY_RATE_LIMIT", "GATEWAY_RETENTION_DAYS",
                     "GATEWAY_SSE_BUFFER", "GATEWAY_WEBHOOK_TIMEOUT_MS", "DATABASE_URL", "RUST_LOG"):
        assert expected in names, f"{expected} not found in src/: the collector is broken"
    assert len(names) >= 30


def test_every_exclusion_is_still_read_somewhere():
    names = source_settings()
    stale = [n for n in NOT_SERVER_SETTINGS if n not in names]
    assert not stale, f"excluded variables no longer in src/: {stale} (drop them from NOT_SERVER_SETTINGS)"


@pytest.mark.parametrize("name", server_settings())
def test_every_setting_has_a_chart_value(name):
    env = rendered_env()
    assert name in env, (
        f"{name} (read in {', '.join(source_settings()[name])}) is set by no chart value: add a value in "
        "charts/automation-gateway/values.yaml, render it in templates/_helpers.tpl (automation-gateway.env), "
        "and set it in ci/full-values.yaml"
    )


def test_every_gateway_variable_the_chart_sets_is_a_setting():
    known = set(source_settings())
    unknown = sorted(n for n in rendered_env() if n.startswith("GATEWAY_") and n not in known)
    # ci/full-values.yaml adds EXTRA_SETTING through `env`, which is not a GATEWAY_* name.
    assert not unknown, f"the chart sets GATEWAY_* variables the service does not read: {unknown}"


def test_every_setting_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [n for n in server_settings() if not re.search(rf"(?<![A-Z0-9_]){n}(?![A-Z0-9_])", readme)]
    assert not missing, f"settings not documented in README.md (Configuration table): {missing}"


def test_every_chart_setting_value_is_documented_in_values_yaml():
    """Each value that feeds an env variable names that variable in its values.yaml comment."""
    text = (CHART / "values.yaml").read_text()
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for name in server_settings():
        if name in ("DATABASE_URL", "GATEWAY_LISTEN", "GATEWAY_ACTIONS_FILE", "GATEWAY_AUTH_TOKENS_FILE",
                    "GATEWAY_WEBHOOK_SECRET_FILE", "GATEWAY_ENV"):
            # Derived from other values (database, containerPort, actions, auth, webhooks, config.environment).
            continue
        assert name in helpers, f"{name} is not rendered by templates/_helpers.tpl"
        assert name in text, f"{name}: no values.yaml comment names it"
