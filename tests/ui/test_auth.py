"""The console with authentication on (GATEWAY_AUTH_TOKENS_FILE): no token -> the 401 message and the
token field focused; the right token -> the list; a token without the read right -> the 403 message.
The token lives in sessionStorage only and never appears in the page's markup."""

from __future__ import annotations

import time

import requests
import yaml
from selenium.webdriver.common.keys import Keys

from conftest import (by_testid, list_ready, one_testid, open_console, row_ids, row_status, screenshot, start_gateway, submit,
                      wait_for, new_token)


def test_token_required_then_accepted(gateways, browser, tmp_path):
    admin, admin_sha = new_token(tmp_path)
    writer, writer_sha = new_token(tmp_path)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [
        {"name": "ui-admin", "sha256": admin_sha, "actions": ["*"], "can_read": True, "can_cancel": True},
        {"name": "ui-writer", "sha256": writer_sha, "actions": ["health_check"], "can_read": False, "can_cancel": False},
    ]}))
    svc = start_gateway(gateways, env={"GATEWAY_AUTH_TOKENS_FILE": str(tokens)})
    auth = {"Authorization": f"Bearer {admin}"}
    r = requests.get(svc.url + "/v1/jobs", timeout=10)
    assert r.status_code == 401, f"GET /v1/jobs without a token: {r.status_code} (authentication is not on)"
    job_id = submit(svc, target="secured", duration_ms=10, headers=auth)

    # The page itself is served without a token; every API call then answers 401.
    open_console(browser, svc, ready=False)
    alert = one_testid(browser, "alert")
    assert alert.get_attribute("role") == "alert"
    wait_for(browser, lambda d: "Authentication required: enter a token" in one_testid(d, "alert").text, 10, "the 401 message")
    token_input = one_testid(browser, "token-input")
    assert token_input.get_attribute("type") == "password"
    assert browser.execute_script("return document.activeElement.id") == "token-input", "the token field is not focused"
    label = browser.execute_script("return document.querySelector('label[for=token-input]').textContent")
    assert label.strip(), "the token field has no label"
    assert row_ids(browser) == []
    wait_for(browser, lambda d: "not loaded" in one_testid(d, "list-info").text, 10, "the list says it is not loaded")
    assert not one_testid(browser, "list-empty").is_displayed(), "a refused list must not say 'no jobs match'"
    wait_for(browser, lambda d: one_testid(d, "live-status").get_attribute("data-state") == "error", 10,
             "the live status says it is off")
    screenshot(browser, "401")
    # The statistics refresh (every 10 s) fails the same way: the alert is not rewritten (and so
    # not announced again by screen readers) for the same message.
    browser.execute_script(
        "window.__alertChanges = 0; new MutationObserver(() => window.__alertChanges++)"
        ".observe(document.getElementById('alert'), {childList: true, subtree: true, characterData: true});")
    time.sleep(10.5)
    assert browser.execute_script("return window.__alertChanges") == 0, "the same 401 alert was rewritten"

    # A wrong token: still 401.
    token_input.send_keys("not-a-valid-token", Keys.ENTER)
    wait_for(browser, lambda d: "Authentication required" in one_testid(d, "alert").text, 10, "401 for a wrong token")
    assert row_ids(browser) == []

    # The right token (typed, Enter): the list loads, the message goes away, live updates run.
    token_input.clear()
    token_input.send_keys(admin, Keys.ENTER)
    wait_for(browser, lambda d: row_ids(d) == [job_id], 10, "the list with the token")
    wait_for(browser, list_ready, 10, "list loaded and live stream open")
    assert one_testid(browser, "alert").text == ""
    later = submit(svc, target="secured-live", duration_ms=10, headers=auth)
    wait_for(browser, lambda d: row_status(d, later) == "SUCCESS", 10, "a live job with the token")
    wait_for(browser, lambda d: one_testid(d, "queue-depth").text == "0", 10, "stats with the token")

    # Kept for the tab (sessionStorage), never in the markup or in localStorage.
    assert browser.execute_script("return sessionStorage.getItem('automation-gateway.token')") == admin
    assert browser.execute_script("return JSON.stringify(localStorage)") == "{}"
    assert admin not in browser.page_source
    browser.refresh()
    wait_for(browser, lambda d: row_ids(d) == [later, job_id], 15, "the list after a reload, same token")
    assert admin not in browser.page_source

    # A token without the read right: 403, said as such.
    token_input = one_testid(browser, "token-input")
    token_input.clear()
    token_input.send_keys(writer, Keys.ENTER)
    wait_for(browser, lambda d: "may not" in one_testid(d, "alert").text, 10, "the 403 message")
    assert "Authentication required" not in one_testid(browser, "alert").text
    # What the previous token could read does not stay on screen.
    wait_for(browser, lambda d: row_ids(d) == [] and by_testid(d, "stat-action") == [], 10, "list and stats cleared")
    assert one_testid(browser, "queue-depth").text == "–"
    screenshot(browser, "403")

    # "Forget" removes it.
    one_testid(browser, "token-clear").click()
    wait_for(browser, lambda d: "Authentication required" in one_testid(d, "alert").text, 10, "401 after forgetting")
    assert browser.execute_script("return sessionStorage.getItem('automation-gateway.token')") is None
