"""The console's job page in a real browser: every field, the timeline (stored, then live), attempts,
the result, deliveries, and cancelling a running job through the in-page confirmation dialog."""

from __future__ import annotations

import json

import requests
from selenium.webdriver.common.by import By

from conftest import (api_job, by_testid, one_testid, open_console, row_ids, row_status, screenshot, start_gateway, submit,
                      wait_api_status, wait_for)


def field_text(driver, name: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="job-field"][data-field="{name}"] dd').text


def timeline(driver) -> list[str]:
    return [e.get_attribute("data-event") for e in by_testid(driver, "job-event")]


def test_job_page_shows_fields_timeline_and_result(gateway, browser):
    job_id = submit(gateway, action="health_check", target="page-target", duration_ms=300, service="demo-api")
    job = wait_api_status(gateway, job_id, "SUCCESS")
    open_console(browser, gateway)
    wait_for(browser, lambda d: row_status(d, job_id) == "SUCCESS", 10, "the job in the list")
    # Rows are links to the job page.
    browser.find_element(By.CSS_SELECTOR, f'[data-testid="job-row"][data-job-id="{job_id}"] a[data-testid="job-link"]').click()
    wait_for(browser, lambda d: d.current_url.endswith(f"#/jobs/{job_id}"), 5, "the job page's URL")
    wait_for(browser, lambda d: timeline(d) == ["created", "claimed", "finished"], 10, "timeline created, claimed, finished")
    assert one_testid(browser, "job-view").is_displayed() and not one_testid(browser, "list-view").is_displayed()
    assert one_testid(browser, "job-title-id").text == job_id

    # Every field of the job JSON is shown.
    shown = {e.get_attribute("data-field") for e in by_testid(browser, "job-field")}
    assert set(job) <= shown, f"fields not shown: {sorted(set(job) - shown)}"
    assert field_text(browser, "job_id") == job_id
    assert field_text(browser, "action") == "health_check"
    assert field_text(browser, "target") == "page-target"
    assert field_text(browser, "status") == "SUCCESS"
    assert field_text(browser, "requested_by") == job["requested_by"]
    assert field_text(browser, "attempts") == "1"
    params = json.loads(field_text(browser, "parameters"))
    assert params == job["parameters"] and params["service"] == "demo-api"
    assert one_testid(browser, "job-page-status").text == "SUCCESS"

    # The result JSON, as the API has it.
    assert job["result"] is not None
    assert json.loads(one_testid(browser, "job-result").text) == job["result"]

    # Timeline entries carry the event's status and actor; the attempts table comes from the events.
    events = {e.get_attribute("data-event"): e for e in by_testid(browser, "job-event")}
    assert "SUCCESS" in events["finished"].text and "gateway" in events["finished"].text
    assert "RUNNING" in events["claimed"].text and "attempt: 1" in events["claimed"].text
    attempts = by_testid(browser, "job-attempt")
    assert len(attempts) == 1 and "SUCCESS" in attempts[0].text, [a.text for a in attempts]
    # No callback URL: deliveries say so. No cancel button for a finished job.
    wait_for(browser, lambda d: "No callback URL" in one_testid(d, "job-deliveries").text, 10, "deliveries panel")
    assert not one_testid(browser, "cancel-button").is_displayed()
    assert one_testid(browser, "job-external").text == "None."
    screenshot(browser, "job")

    # Back to the list with the back link.
    one_testid(browser, "back-link").click()
    wait_for(browser, lambda d: one_testid(d, "list-view").is_displayed(), 5, "the list again")


def test_job_page_follows_a_running_job_live(gateway, browser):
    job_id = submit(gateway, target="live-page", duration_ms=6000)  # room for a slow, loaded machine
    wait_api_status(gateway, job_id, "RUNNING", within=10)
    open_console(browser, gateway, f"#/jobs/{job_id}")
    wait_for(browser, lambda d: timeline(d)[:2] == ["created", "claimed"], 10, "the stored events")
    assert "finished" not in timeline(browser)
    assert one_testid(browser, "job-page-status").text == "RUNNING"
    browser.execute_script("window.__noReload = 1;")
    wait_for(browser, lambda d: timeline(d) == ["created", "claimed", "finished"], 15, "the finished event, live")
    wait_for(browser, lambda d: one_testid(d, "job-page-status").text == "SUCCESS", 10, "status SUCCESS on the page")
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="job-field"][data-field="status"] dd').text == "SUCCESS",
             10, "the status field refreshed")
    assert json.loads(one_testid(browser, "job-result").text) == api_job(gateway, job_id)["result"]
    assert browser.execute_script("return window.__noReload") == 1, "the page was reloaded"
    ids = [int(e.get_attribute("data-event-id")) for e in by_testid(browser, "job-event")]
    assert ids == sorted(ids) and len(set(ids)) == 3, f"event ids {ids}"


def test_failed_attempts_and_errors_are_shown(gateways, browser):
    svc = start_gateway(gateways, env={"GATEWAY_ACTION_POLICY": "health_check.max_attempts=2,health_check.backoff_ms=100"})
    job_id = submit(svc, target="flaky", duration_ms=10, fail=True)
    job = wait_api_status(svc, job_id, "FAILED", within=30)
    open_console(browser, svc, f"#/jobs/{job_id}")
    want = ["created", "claimed", "attempt_failed", "retry_scheduled", "claimed", "finished"]
    wait_for(browser, lambda d: timeline(d) == want, 10, f"timeline {want}")
    attempts = by_testid(browser, "job-attempt")
    assert [a.get_attribute("data-attempt") for a in attempts] == ["1", "2"]
    assert "failed" in attempts[0].text and "FAILED" in attempts[1].text
    assert job["error"], job
    assert job["error"] in field_text(browser, "error")
    assert one_testid(browser, "job-page-status").text == "FAILED"


def test_cancel_a_running_job_through_the_dialog(gateway, browser):
    job_id = submit(gateway, target="long-run", duration_ms=30000)
    wait_api_status(gateway, job_id, "RUNNING", within=10)
    open_console(browser, gateway, f"#/jobs/{job_id}")
    button = wait_for(browser, lambda d: (lambda b: b if b.is_displayed() else None)(one_testid(d, "cancel-button")), 10,
                      "the cancel button")
    assert button.tag_name == "button"
    dialog = one_testid(browser, "cancel-dialog")
    assert dialog.tag_name == "dialog" and not browser.execute_script("return arguments[0].open", dialog)

    # Opening the dialog asks first; "No" leaves the job running.
    button.click()
    wait_for(browser, lambda d: d.execute_script("return arguments[0].open", dialog), 5, "the confirmation dialog open")
    assert job_id in dialog.text
    screenshot(browser, "cancel-dialog", full_page=False)
    one_testid(browser, "cancel-dismiss").click()
    wait_for(browser, lambda d: not d.execute_script("return arguments[0].open", dialog), 5, "the dialog closed")
    assert api_job(gateway, job_id)["status"] == "RUNNING", "dismissing the dialog cancelled the job"

    # "Yes" cancels it.
    button.click()
    wait_for(browser, lambda d: d.execute_script("return arguments[0].open", dialog), 5, "the dialog open again")
    one_testid(browser, "cancel-confirm").click()
    wait_for(browser, lambda d: one_testid(d, "job-page-status").text == "CANCELED", 15, "CANCELED on the page")
    assert api_job(gateway, job_id)["status"] == "CANCELED"
    wait_for(browser, lambda d: timeline(d)[-1:] == ["canceled"], 10, "the canceled event last in the timeline")
    assert "cancel_requested" in timeline(browser)
    wait_for(browser, lambda d: not one_testid(d, "cancel-button").is_displayed(), 5, "no cancel button any more")
    screenshot(browser, "job-canceled")


def test_cancel_a_pending_job_from_the_page(gateways, browser):
    # An API-only replica (0 workers) keeps the job PENDING.
    svc = start_gateway(gateways, env={"GATEWAY_WORKERS": "0"})
    job_id = submit(svc, target="queued", duration_ms=10)
    open_console(browser, svc, f"#/jobs/{job_id}")
    wait_for(browser, lambda d: one_testid(d, "job-page-status").text == "PENDING", 10, "PENDING on the page")
    one_testid(browser, "cancel-button").click()
    one_testid(browser, "cancel-confirm").click()
    wait_for(browser, lambda d: one_testid(d, "job-page-status").text == "CANCELED", 10, "CANCELED on the page")
    assert api_job(svc, job_id)["status"] == "CANCELED"
    wait_for(browser, lambda d: timeline(d) == ["created", "canceled"], 10, "timeline created, canceled")


def test_unknown_job_says_so(gateway, browser):
    open_console(browser, gateway, "#/jobs/01900000-0000-7000-8000-000000000000")
    wait_for(browser, lambda d: "No such job" in one_testid(d, "job-message").text, 10, "the not-found message")


def test_webhook_deliveries_are_shown(gateways, browser, tmp_path):
    import base64
    import secrets
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


    got = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append(body)
            code = 500 if len(got) == 1 else 204  # the first try fails, the retry succeeds
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        secret = tmp_path / "webhook-secret"
        secret.write_text("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        secret.chmod(0o600)
        svc = start_gateway(gateways, env={"GATEWAY_WEBHOOK_SECRET_FILE": str(secret),
                                           "GATEWAY_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
                                           "GATEWAY_WEBHOOK_ALLOW_PRIVATE": "true",
                                           "GATEWAY_WEBHOOK_RETRY_BASE_MS": "300"})
        hook = f"http://127.0.0.1:{srv.server_address[1]}/hook"
        r = requests.post(svc.url + "/v1/jobs", json={
            "action": "health_check", "target": "hooked", "requested_by": "ui@example.com",
            "parameters": {"simulate": {"duration_ms": 10, "fail": False}}, "callback_url": hook}, timeout=10)
        assert r.status_code == 202, f"POST with callback_url: {r.status_code} {r.text[:500]}"
        job_id = r.json()["job_id"]
        wait_api_status(svc, job_id, "SUCCESS")
        open_console(browser, svc, f"#/jobs/{job_id}")
        wait_for(browser, lambda d: field_text(d, "callback_url") == hook, 10, "the callback URL field")
        wait_for(browser, lambda d: len(by_testid(d, "delivery-attempt")) == 2, 20, "two delivery tries, live")
        wait_for(browser, lambda d: one_testid(d, "delivery-state").text == "delivered", 10, "state delivered")
        rows = [a.text for a in by_testid(browser, "delivery-attempt")]
        assert "500" in rows[0] and "204" in rows[1], rows
        screenshot(browser, "job-deliveries")
    finally:
        srv.shutdown()


def test_data_is_shown_as_text_never_markup(gateway, browser):
    evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    job_id = submit(gateway, target="xss", requested_by=evil, duration_ms=10, note=evil)
    wait_api_status(gateway, job_id, "SUCCESS")
    open_console(browser, gateway)
    wait_for(browser, lambda d: job_id in row_ids(d), 10, "the job listed")
    cell = browser.find_element(By.CSS_SELECTOR, f'[data-testid="job-row"][data-job-id="{job_id}"] [data-testid="job-requested-by"]')
    assert cell.text == evil
    open_console(browser, gateway, f"#/jobs/{job_id}")
    wait_for(browser, lambda d: field_text(d, "requested_by") == evil, 10, "requested_by shown as text")
    assert json.loads(field_text(browser, "parameters"))["note"] == evil
    assert browser.execute_script("return document.querySelectorAll('main img, main script').length") == 0
    assert browser.execute_script("return window.__pwned === undefined")
