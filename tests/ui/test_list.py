"""The console's job list in a real browser: the page and its CSP, live updates without reload,
filters, paging, pause/resume and reconnecting after the gateway went away."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from conftest import (CSP, REPO, api_job, browser_log, by_testid, list_ready, one_testid, open_console, restart_same_port,
                      row_ids, row_status, screenshot, start_gateway, submit, wait_api_status, wait_for)


def csp_entries(entries):
    return [e for e in entries if "Content Security Policy" in str(e.get("message", ""))
            or "Content-Security-Policy" in str(e.get("message", ""))]


def test_gateway_serves_the_files_in_ui(gateway):
    """/ui, /ui/app.js, /ui/app.css are ui/ as embedded at build time, with their types and the CSP.
    A binary built before the last change to ui/ fails here: the other tests would test other files."""
    stale = []
    for path, ctype in (("/ui", "text/html"), ("/ui/app.js", "javascript"), ("/ui/app.css", "text/css")):
        a = requests.get(gateway.url + path, timeout=10)
        assert a.status_code == 200, f"GET {path}: {a.status_code}"
        assert ctype in a.headers.get("content-type", ""), f"GET {path}: content-type {a.headers.get('content-type')!r}"
        assert a.headers.get("content-security-policy") == CSP, f"GET {path}: CSP {a.headers.get('content-security-policy')!r}"
        name = "index.html" if path == "/ui" else Path(path).name
        want = (REPO / "ui" / name).read_bytes()
        if a.content != want:
            stale.append(f"{path} ({len(a.content)} bytes, sha256 {hashlib.sha256(a.content).hexdigest()[:12]}) != ui/{name} "
                         f"({len(want)} bytes, sha256 {hashlib.sha256(want).hexdigest()[:12]})")
    assert not stale, "the gateway serves other files than ui/ (binary built before the last change to ui/?): " + "; ".join(stale)


def test_page_served_with_csp_and_no_violations(gateway, browser):
    r = requests.get(gateway.url + "/ui", timeout=10)
    assert r.status_code == 200, f"GET /ui: {r.status_code} {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("text/html"), r.headers.get("content-type")
    assert r.headers.get("content-security-policy") == CSP, \
        f"GET /ui Content-Security-Policy: {r.headers.get('content-security-policy')!r}, want {CSP!r}"
    directives = {d.strip().split(" ")[0]: d.strip().split(" ")[1:] for d in CSP.split(";")}
    assert directives["script-src"] == ["'self'"] and "'unsafe-inline'" not in r.headers["content-security-policy"]
    # No inline script or style in the page itself.
    assert "<script>" not in r.text and " style=" not in r.text and " onclick=" not in r.text.lower()

    submit(gateway, target="csp-check", duration_ms=10)
    open_console(browser, gateway)
    assert browser.title.endswith("automation-gateway")
    wait_for(browser, lambda d: len(row_ids(d)) == 1, 10, "the submitted job listed")
    entries = browser_log(browser)
    assert not csp_entries(entries), f"CSP violations while loading the console: {csp_entries(entries)}"
    severe = [e for e in entries if e.get("level") == "SEVERE"]
    assert not severe, f"console errors while loading the console: {severe}"
    screenshot(browser, "list")

    # The policy is enforced: an injected inline script and an inline style attribute are refused,
    # and the browser reports it (so the empty report above means something).
    browser.execute_script(
        "window.__cspViolations = 0; document.addEventListener('securitypolicyviolation', () => window.__cspViolations++);")
    ran = browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__inlineRan = true;';"
        "document.head.appendChild(s); return window.__inlineRan === true;")
    assert ran is False, "an inline script ran: the CSP does not forbid inline scripts"
    width = browser.execute_script(
        "const d = document.createElement('div'); d.setAttribute('style', 'width: 1234px'); document.body.appendChild(d);"
        "const w = getComputedStyle(d).width; d.remove(); return w;")
    assert width != "1234px", "an inline style attribute was applied: the CSP does not forbid inline styles"
    wait_for(browser, lambda d: d.execute_script("return window.__cspViolations") >= 2, 5, "two securitypolicyviolation events")
    wait_for(browser, lambda d: len(csp_entries(browser_log(d))) >= 1, 5, "the CSP violation in the browser log")


def test_new_job_appears_and_finishes_without_reload(gateway, browser):
    older = submit(gateway, target="older", duration_ms=10)
    wait_api_status(gateway, older, "SUCCESS")
    open_console(browser, gateway)
    wait_for(browser, lambda d: row_ids(d) == [older], 10, "the older job listed")
    wait_for(browser, lambda d: one_testid(d, "queue-depth").text == "0", 10, "queue depth 0")
    start_url = browser.current_url
    browser.execute_script("window.__noReload = 'still-here';")

    # Every status the row shows, recorded in the page (WebDriver polling could miss a short one).
    browser.execute_script("""
        window.__seen = {};
        const rows = document.getElementById('job-rows');
        new MutationObserver(() => {
          for (const r of rows.querySelectorAll('[data-testid=job-row]')) {
            const s = r.querySelector('[data-testid=job-status]').textContent;
            const l = (window.__seen[r.dataset.jobId] ||= []);
            if (l[l.length - 1] !== s) l.push(s);
          }
        }).observe(rows, {childList: true, subtree: true, characterData: true, attributes: true});""")
    job = submit(gateway, target="live-one", duration_ms=2000)
    wait_for(browser, lambda d: job in row_ids(d), 5, "the new job in the list without reload")
    assert row_ids(browser)[0] == job, f"the new job is not at the top: {row_ids(browser)}"
    wait_for(browser, lambda d: row_status(d, job) == "SUCCESS", 20, "the row turned SUCCESS in place")
    seen = browser.execute_script("return window.__seen[arguments[0]]", job) or []
    assert seen[-1] == "SUCCESS" and set(seen[:-1]) & {"PENDING", "RUNNING"}, \
        f"the row did not show the job before it finished: statuses shown {seen}"
    assert api_job(gateway, job)["status"] == "SUCCESS"
    row = browser.find_element(By.CSS_SELECTOR, f'[data-testid="job-row"][data-job-id="{job}"]')
    assert row.find_element(By.CSS_SELECTOR, '[data-testid="job-target"]').text == "live-one"
    # No navigation happened: the page's state survived and the URL is the same.
    assert browser.execute_script("return window.__noReload") == "still-here", "the page was reloaded"
    assert browser.current_url == start_url
    assert row_ids(browser) == [job, older]
    # The statistics followed (refreshed on events, no reload).
    def counts(d):
        card = d.find_element(By.CSS_SELECTOR, '[data-testid="stat-action"][data-action="health_check"]')
        return card.find_element(By.CSS_SELECTOR, '[data-testid="stat-count"][data-status="SUCCESS"]').text
    wait_for(browser, lambda d: counts(d) == "2", 15, "stats: 2 successful health_check jobs")
    for name in ("restart_service", "rotate_config"):
        assert browser.find_elements(By.CSS_SELECTOR, f'[data-testid="stat-action"][data-action="{name}"]'), \
            f"stats card of {name} missing"
    screenshot(browser, "list-live")


def test_filters(gateways, browser):
    svc = start_gateway(gateways, env={"GATEWAY_ACTION_POLICY": "rotate_config.max_attempts=1"})
    a = submit(svc, action="health_check", target="alpha", requested_by="alice@example.com", duration_ms=10)
    b = submit(svc, action="rotate_config", target="beta", requested_by="bob@example.com", duration_ms=10, fail=True)
    c = submit(svc, action="restart_service", target="alpha", requested_by="bob@example.com", duration_ms=10)
    wait_api_status(svc, a, "SUCCESS")
    wait_api_status(svc, b, "FAILED")
    wait_api_status(svc, c, "SUCCESS")
    open_console(browser, svc)
    wait_for(browser, lambda d: row_ids(d) == [c, b, a], 10, "all three jobs, newest first")
    # The action filter offers the catalog's actions (GET /v1/actions).
    wait_for(browser, lambda d: len(Select(one_testid(d, "filter-action")).options) == 4, 10, "the action options")
    opts = [o.get_attribute("value") for o in Select(one_testid(browser, "filter-action")).options]
    assert opts == ["", "health_check", "restart_service", "rotate_config"], opts

    def expect(ids, what):
        wait_for(browser, lambda d: list_ready(d) and row_ids(d) == ids, 10, f"{what}: rows {ids}")

    def reset():
        one_testid(browser, "filter-reset").click()
        expect([c, b, a], "reset")

    Select(one_testid(browser, "filter-status")).select_by_value("FAILED")
    expect([b], "status=FAILED")
    assert [s.text for s in by_testid(browser, "job-status")] == ["FAILED"]
    reset()
    Select(one_testid(browser, "filter-status")).select_by_value("SUCCESS")
    expect([c, a], "status=SUCCESS")
    reset()
    Select(one_testid(browser, "filter-action")).select_by_value("restart_service")
    expect([c], "action=restart_service")
    reset()
    one_testid(browser, "filter-target").send_keys("alpha", Keys.ENTER)
    expect([c, a], "target=alpha")
    Select(one_testid(browser, "filter-action")).select_by_value("health_check")
    expect([a], "target=alpha and action=health_check")
    reset()
    one_testid(browser, "filter-requested-by").send_keys("bob@example.com", Keys.ENTER)
    expect([c, b], "requested_by=bob@example.com")
    one_testid(browser, "filter-target").send_keys("nobody", Keys.ENTER)
    expect([], "no match")
    assert one_testid(browser, "list-empty").is_displayed()
    reset()

    # A live job joins the filtered list only when it matches the filters.
    Select(one_testid(browser, "filter-action")).select_by_value("restart_service")
    expect([c], "action=restart_service")
    other = submit(svc, action="health_check", target="alpha", duration_ms=10)
    match = submit(svc, action="restart_service", target="gamma", duration_ms=10)
    wait_for(browser, lambda d: row_ids(d) == [match, c], 10, "the matching live job on top")
    wait_api_status(svc, other, "SUCCESS")
    time.sleep(0.5)
    assert other not in row_ids(browser), "a live job outside the filter was added"


def test_load_more_pages_with_the_cursor(gateway, browser):
    ids = [submit(gateway, target=f"page-{i}", duration_ms=1) for i in range(57)]
    for i in ids[-3:]:
        wait_api_status(gateway, i, "SUCCESS")
    open_console(browser, gateway)
    wait_for(browser, lambda d: len(row_ids(d)) == 50, 10, "the first page of 50")
    assert row_ids(browser) == list(reversed(ids))[:50]
    more = one_testid(browser, "load-more")
    assert more.is_displayed() and more.tag_name == "button"
    more.click()
    wait_for(browser, lambda d: len(row_ids(d)) == 57, 10, "the second page appended")
    assert row_ids(browser) == list(reversed(ids)), "paging lost, repeated or reordered jobs"
    wait_for(browser, lambda d: not one_testid(d, "load-more").is_displayed(), 5, "no more pages")



def test_pause_and_resume_live_updates(gateway, browser):
    open_console(browser, gateway)
    first = submit(gateway, target="before-pause", duration_ms=10)
    wait_for(browser, lambda d: row_status(d, first) == "SUCCESS", 10, "the first job live")
    toggle = one_testid(browser, "live-toggle")
    assert toggle.tag_name == "button" and "Pause" in toggle.text
    toggle.click()
    wait_for(browser, lambda d: one_testid(d, "live-status").get_attribute("data-state") == "paused", 5, "paused")
    assert "Resume" in toggle.text
    assert "paused" in one_testid(browser, "live-status").text
    hidden = submit(gateway, target="while-paused", duration_ms=10)
    wait_api_status(gateway, hidden, "SUCCESS")
    time.sleep(1.0)
    assert hidden not in row_ids(browser), "a job was added while live updates were paused"
    toggle.click()
    wait_for(browser, lambda d: one_testid(d, "live-status").get_attribute("data-state") == "open", 10, "live again")
    assert "Pause" in toggle.text
    # Resumed from the last event seen (Last-Event-ID): what happened meanwhile is caught up.
    wait_for(browser, lambda d: row_status(d, hidden) == "SUCCESS", 10, "the job made while paused, after resume")
    assert row_ids(browser)[:2] == [hidden, first]
    after = submit(gateway, target="after-resume", duration_ms=10)
    wait_for(browser, lambda d: row_status(d, after) == "SUCCESS", 10, "a job after resume")


def test_reconnects_after_the_gateway_restarts(gateways, browser):
    svc = start_gateway(gateways)
    open_console(browser, svc)
    before = submit(svc, target="before-restart", duration_ms=10)
    wait_for(browser, lambda d: row_status(d, before) == "SUCCESS", 10, "a job before the restart")
    browser.execute_script("window.__noReload = 1;")
    svc.stop()
    wait_for(browser, lambda d: one_testid(d, "live-status").get_attribute("data-state") in ("reconnecting", "connecting"),
             15, "the console notices the dropped stream")
    again = restart_same_port(gateways, svc)
    wait_for(browser, lambda d: one_testid(d, "live-status").get_attribute("data-state") == "open", 45,
             "the stream reconnected (backoff)")
    after = submit(again, target="after-restart", duration_ms=10)
    wait_for(browser, lambda d: row_status(d, after) == "SUCCESS", 10, "a job after the restart, live")
    assert browser.execute_script("return window.__noReload") == 1, "the page was reloaded"
    assert row_ids(browser)[:2] == [after, before]
