"""Shared fixtures of the console tests (issue 13: the job console at /ui, in a real browser).

The service harness is tests/faults/conftest.py, loaded here under the module name "faults_harness"
(not duplicated), as tests/runners/conftest.py does. Added here:

- fixture `gateway` -> a Service on SQLite in the test's tmp dir, auth off (`start_gateway` for more);
- fixture `browser` -> a Selenium WebDriver for headless Debian Chromium (/usr/bin/chromium) through
  /usr/bin/chromedriver; Selenium Manager never downloads (SE_OFFLINE=1, explicit paths). On a test
  failure it saves a screenshot, the page's HTML and the browser log under the artifacts folder;
- `screenshot(driver, name)`: a PNG in $UI_ARTIFACTS (default tests/ui/artifacts/);
- `open_console(driver, svc, fragment="#/")`, `wait_for(driver, pred, within, what)`,
  `submit(svc, ...)`, `wait_api_status(svc, job_id, statuses)`, `row_ids(driver)`, `row_status(driver, id)`,
  `browser_log(driver)`, `new_token(tmp_path)`.

Every wait is bounded. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

os.environ.setdefault("SE_OFFLINE", "1")  # before Selenium is imported: never download a driver

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

sys.path.insert(0, str(REPO / "tests" / "lib"))
from harness import export_faults_harness  # noqa: E402

faults_harness = export_faults_harness(globals())

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("UI_ARTIFACTS") or (HERE / "artifacts"))
REQUESTED_BY = "ui@example.com"

# The policy the spec requires on /ui, exactly.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


# ------------------------------------------------------------------------------------- gateway


def start_gateway(gateways: Gateways, name: str = "gw", env: dict | None = None) -> Service:
    """A gateway on SQLite at <tmp>/<name>/gw.db (auth off unless env sets a tokens file)."""
    d = Path(gateways.root) / name
    d.mkdir(parents=True, exist_ok=True)
    e = {"GATEWAY_SSE_HEARTBEAT_MS": "5000"}
    e.update(env or {})
    return gateways.start(name, f"sqlite://{d / 'gw.db'}?mode=rwc", env=e)


@pytest.fixture
def gateway(gateways) -> Service:
    return start_gateway(gateways)


def submit(svc: Service, action: str = "health_check", target: str = "ui-target", duration_ms: int = 50,
           fail: bool = False, requested_by: str = REQUESTED_BY, headers: dict | None = None, **params) -> str:
    """POST /v1/jobs that must be accepted (202); returns the job id."""
    p = dict(params)
    p["simulate"] = {"duration_ms": duration_ms, "fail": fail}
    body = {"action": action, "target": target, "requested_by": requested_by, "parameters": p}
    r = requests.post(svc.url + "/v1/jobs", json=body, headers=headers or {}, timeout=20)
    if r.status_code != 202:
        pytest.fail(f"POST /v1/jobs {body}: {r.status_code} {r.text[:1000]}", pytrace=False)
    return r.json()["job_id"]


def api_job(svc: Service, job_id: str, headers: dict | None = None) -> dict:
    r = requests.get(f"{svc.url}/v1/jobs/{job_id}", headers=headers or {}, timeout=10)
    if r.status_code != 200:
        pytest.fail(f"GET /v1/jobs/{job_id}: {r.status_code} {r.text[:1000]}", pytrace=False)
    return r.json()


def wait_api_status(svc: Service, job_id: str, statuses, within: float = 30.0, headers: dict | None = None) -> dict:
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + within
    last = None
    while True:
        last = api_job(svc, job_id, headers)
        if last.get("status") in statuses:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"job {job_id}: status {last.get('status')!r}, wanted one of {sorted(statuses)} within {within} s; "
                        f"job: {json.dumps(last)}\nlog tail:\n{svc.tail(3000)}", pytrace=False)
        time.sleep(0.1)


def new_token(tmp_path: Path) -> tuple[str, str]:
    """(token, sha256 hex) printed by `automation-gateway token`."""
    r = subprocess.run([gateway_bin(), "token"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    if r.returncode != 0:
        pytest.fail(f"`automation-gateway token` exited {r.returncode}: {r.stderr[:1000]}", pytrace=False)
    token = re.search(r"^token:\s*(\S+)\s*$", r.stdout, re.M)
    sha = re.search(r"^sha256:\s*([0-9a-fA-F]{64})\s*$", r.stdout, re.M)
    if not token or not sha:
        pytest.fail(f"`automation-gateway token` printed no 'token:' and 'sha256:' lines: {r.stdout!r}", pytrace=False)
    return token.group(1), sha.group(1)


# ------------------------------------------------------------------------------------- browser


def _chrome_options(width: int, height: int) -> webdriver.ChromeOptions:
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
              "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-default-apps", "--metrics-recording-only",
              "--password-store=basic", "--hide-scrollbars", f"--window-size={width},{height}", "--lang=en-US"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return o


def make_driver(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    for p in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(p) and os.access(p, os.X_OK)):
            pytest.fail(f"{p} is missing (apt-get install chromium chromium-driver; tests/ui/run.sh does it)", pytrace=False)
    service = ChromeService(executable_path=CHROMEDRIVER, log_output=str(ARTIFACTS / "chromedriver.log"))
    d = webdriver.Chrome(service=service, options=_chrome_options(width, height))
    d.set_page_load_timeout(30)
    d.set_script_timeout(30)
    return d


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:120]


@pytest.fixture
def browser(request, gateways):
    """Headless Chromium (torn down before the gateways of the test, which it depends on)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d = make_driver()
    d._ui_log = []  # browser log entries read so far (reading the log drains it)
    yield d
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        base = ARTIFACTS / f"FAILED-{_safe_name(request.node.name)}"
        try:
            d.save_screenshot(str(base) + ".png")
            Path(str(base) + ".html").write_text(d.page_source)
            Path(str(base) + ".log").write_text("\n".join(json.dumps(e) for e in browser_log(d)))
        except WebDriverException as e:
            print(f"[ui] could not save failure artifacts: {e}")
    try:
        d.quit()
    except WebDriverException:
        pass


def browser_log(driver) -> list[dict]:
    """Every console entry so far (accumulated: the driver's log drains on read)."""
    try:
        driver._ui_log.extend(driver.get_log("browser"))
    except (WebDriverException, AttributeError) as e:
        pytest.fail(f"the driver does not expose the browser log: {e}", pytrace=False)
    return list(driver._ui_log)


def screenshot(driver, name: str, full_page: bool = True) -> Path:
    """A PNG of the page in the artifacts folder: the whole page (CDP), or just the viewport."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS / f"{_safe_name(name)}.png"
    if not full_page:
        driver.save_screenshot(str(p))
        return p
    m = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = m.get("cssContentSize") or m["contentSize"]
    width = driver.execute_script("return window.innerWidth")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": min(size["height"], 4000), "scale": 1}})
    p.write_bytes(base64.b64decode(shot["data"]))
    return p


def wait_for(driver, pred, within: float = 15.0, what: str = "condition", every: float = 0.05):
    """Waits until pred(driver) is truthy; returns its value. Stale elements just mean: try again."""
    def check(d):
        try:
            return pred(d)
        except StaleElementReferenceException:
            return False
    try:
        return WebDriverWait(driver, within, poll_frequency=every).until(check)
    except Exception as e:  # noqa: BLE001 - report what was awaited and what the page shows
        alert = ""
        try:
            alert = driver.find_element(By.ID, "alert").text
        except WebDriverException:
            pass
        pytest.fail(f"not reached within {within} s: {what} ({type(e).__name__}); page alert: {alert!r}; "
                    f"url {driver.current_url}", pytrace=False)


def by_testid(driver, testid: str):
    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def one_testid(driver, testid: str):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def row_ids(driver) -> list[str]:
    """The job ids of the list's rows, top to bottom."""
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=job-row]')].map(r => r.dataset.jobId);")


def row_status(driver, job_id: str) -> str | None:
    return driver.execute_script(
        "const r = document.querySelector(`[data-testid=job-row][data-job-id=\"${arguments[0]}\"]`);"
        "if (!r) return null; const s = r.querySelector('[data-testid=job-status]'); return s ? s.textContent : null;",
        job_id)


def list_ready(driver) -> bool:
    """The list view answered (loaded) and the live stream is connected."""
    return driver.execute_script(
        "const i = document.getElementById('list-info'); const l = document.getElementById('live-status');"
        "return !!i && i.textContent !== '' && i.textContent !== 'Loading…' && l.dataset.state === 'open';")


def open_console(driver, svc: Service, fragment: str = "#/", ready: bool = True) -> None:
    driver.get(f"{svc.url}/ui{fragment}")
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", 20, "page load")
    if ready and fragment in ("", "#/"):
        wait_for(driver, list_ready, 20, "job list loaded and live stream open")


def no_horizontal_overflow(driver) -> tuple[bool, int, int]:
    sw, iw = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    return sw <= iw, sw, iw


def restart_same_port(gateways: Gateways, svc: Service, within: float = 60.0) -> Service:
    """Stops `svc` and starts the same binary again with the same environment (same port, same
    database), so a page that was talking to it can reconnect. Registered for teardown."""
    svc.stop()
    n = sum(1 for s in gateways.started if s.workdir == svc.workdir)
    log_path = svc.workdir / f"restart-{n}.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([gateway_bin(), "serve"], env=svc.env, cwd=svc.workdir, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    again = Service(proc=proc, url=svc.url, port=svc.port, log_path=log_path, workdir=svc.workdir, env=svc.env)
    gateways.started.append(again)
    deadline = time.monotonic() + within
    while not again.ready(timeout=1.0):
        if not again.alive():
            pytest.fail(f"the restarted gateway exited with {proc.returncode}; log:\n{again.tail()}", pytrace=False)
        if time.monotonic() >= deadline:
            pytest.fail(f"the restarted gateway was not ready within {within} s; log:\n{again.tail()}", pytrace=False)
        time.sleep(0.1)
    return again
