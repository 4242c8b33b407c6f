"""Narrow screens and keyboard use: at 375 px nothing scrolls sideways and every control is reachable;
Tab reaches the filters and the job links (with a visible focus ring) and Enter on a job link opens it;
every input has a label; buttons are <button>s."""

from __future__ import annotations

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import (by_testid, no_horizontal_overflow, one_testid, open_console, row_ids, screenshot, submit,
                      wait_api_status, wait_for)

CONTROLS = ["token-input", "token-save", "token-clear", "live-toggle", "filter-status", "filter-action", "filter-target",
            "filter-requested-by", "filter-apply", "filter-reset"]


def narrow(driver, width=375, height=800):
    driver.set_window_size(width, height)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    wait_for(driver, lambda d: d.execute_script("return window.innerWidth") == width, 5, f"innerWidth {width}")


def reachable(driver, el) -> bool:
    """Displayed, inside the viewport's width, and the topmost element at its centre once scrolled to."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'nearest'});", el)
    return driver.execute_script(
        "const e = arguments[0]; const r = e.getBoundingClientRect();"
        "if (r.width === 0 || r.height === 0 || r.left < 0 || r.right > window.innerWidth + 0.5) return false;"
        "const t = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);"
        "return t === e || e.contains(t) || (t && t.control === e) || (t && t.tagName === 'LABEL' && t.htmlFor === e.id);", el)


def test_narrow_screen_has_no_horizontal_scroll(gateway, browser):
    long_target = "svc-" + "x" * 120 + ".internal.example.com"
    job_id = submit(gateway, target=long_target, requested_by="someone.with.a.rather.long.address@example.com", duration_ms=10)
    wait_api_status(gateway, job_id, "SUCCESS")
    submit(gateway, action="restart_service", target="short", duration_ms=10)
    narrow(browser)
    open_console(browser, gateway)
    wait_for(browser, lambda d: len(row_ids(d)) == 2, 10, "two jobs listed")
    ok, sw, iw = no_horizontal_overflow(browser)
    assert ok, f"horizontal overflow at 375 px on the list: scrollWidth {sw} > innerWidth {iw}"
    for testid in CONTROLS:
        el = one_testid(browser, testid)
        assert reachable(browser, el), f"{testid} not reachable at 375 px"
    link = by_testid(browser, "job-link")[0]
    assert reachable(browser, link), "the job link not reachable at 375 px"
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "narrow")

    # The controls work there: filter, then open the job.
    one_testid(browser, "filter-target").send_keys(long_target, Keys.ENTER)
    wait_for(browser, lambda d: row_ids(d) == [job_id], 10, "the filtered list at 375 px")
    by_testid(browser, "job-link")[0].click()
    wait_for(browser, lambda d: [e.get_attribute("data-event") for e in by_testid(d, "job-event")] == ["created", "claimed", "finished"],
             10, "the job page at 375 px")
    ok, sw, iw = no_horizontal_overflow(browser)
    assert ok, f"horizontal overflow at 375 px on the job page: scrollWidth {sw} > innerWidth {iw}"
    assert reachable(browser, one_testid(browser, "back-link"))
    screenshot(browser, "narrow-job")


def test_keyboard_reaches_filters_and_opens_a_job(gateway, browser):
    a = submit(gateway, target="kbd-a", duration_ms=10)
    b = submit(gateway, target="kbd-b", duration_ms=10)
    wait_api_status(gateway, b, "SUCCESS")
    open_console(browser, gateway)
    wait_for(browser, lambda d: row_ids(d) == [b, a], 10, "two jobs listed")
    browser.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")

    reached = []
    focus_styles = {}
    link_target = None
    for _ in range(80):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        info = browser.execute_script(
            "const e = document.activeElement; const s = getComputedStyle(e);"
            "return [e.dataset.testid || e.id || e.tagName, e.dataset.testid === 'job-link' ? e.closest('tr').dataset.jobId : null,"
            " s.outlineStyle, s.outlineWidth, e.matches(':focus-visible')];")
        key, row_id, ostyle, owidth, visible = info
        reached.append(key)
        focus_styles[key] = (ostyle, owidth, visible)
        if key == "job-link" and row_id == a:
            link_target = row_id
            break
    for want in ("token-input", "filter-status", "filter-action", "filter-target", "filter-requested-by", "filter-apply",
                 "live-toggle", "job-link"):
        assert want in reached, f"Tab never reached {want}; order: {reached}"
    order = [k for k in reached if k.startswith("filter-")]
    assert order.index("filter-status") < order.index("filter-action") < order.index("filter-target") < order.index("filter-requested-by")
    for key in ("filter-status", "filter-target", "job-link"):
        ostyle, owidth, visible = focus_styles[key]
        assert visible and ostyle != "none" and owidth not in ("0px", ""), f"{key}: no visible focus ring ({focus_styles[key]})"
    assert link_target == a, f"Tab never reached the second job's link: {reached}"

    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(browser, lambda d: d.current_url.endswith(f"#/jobs/{a}"), 5, "Enter on the job link opens the job")
    wait_for(browser, lambda d: one_testid(d, "job-title-id").text == a, 10, "the job page of that job")
    # Focus moved to the page's heading, so the next Tab starts on the job page.
    assert browser.execute_script("return document.activeElement.id") == "job-title"


def test_every_input_is_labelled_and_buttons_are_buttons(gateway, browser):
    open_console(browser, gateway)
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels || e.labels.length === 0)"
        ".map(e => e.id || e.name);")
    assert unlabelled == [], f"inputs without a label: {unlabelled}"
    fake_buttons = browser.execute_script(
        "return [...document.querySelectorAll('[role=button], a:not([href]), [onclick]')].map(e => e.outerHTML);")
    assert fake_buttons == [], f"clickable non-buttons: {fake_buttons}"
    assert browser.execute_script("return document.documentElement.lang") == "en"
    assert browser.find_element(By.ID, "live-status").get_attribute("aria-live") == "polite"
