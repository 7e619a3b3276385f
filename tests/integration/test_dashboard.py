"""The live dashboard in a real headless Chromium (Debian's), driven by Playwright for Python.

Never `playwright install`: the browser is /usr/bin/chromium. The screenshot is left in
artifacts/dashboard.png for people to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

import pytest

from conftest import REPO, WebNode

ALICE = "schedd-alice"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium():
    """Debian's chromium, headless, driven by Playwright (never `playwright install`)."""
    try:
        from playwright import sync_api
    except ImportError:  # pragma: no cover
        pytest.fail("needs Playwright for Python: pip install -e '.[test]' (never `playwright install`)")
    if not os.path.exists(CHROMIUM):
        pytest.fail("needs Debian's chromium (scripts/setup installs it)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(web_node: WebNode, tmp_path):
    with chromium() as browser:
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = ctx.new_page()
        pg.set_default_timeout(15_000)
        foreign: list[str] = []
        pg.on("request", lambda r: None if r.url.startswith(web_node.url) else foreign.append(r.url))
        pg.foreign = foreign
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.errors = errors
        try:
            yield pg
        finally:
            ctx.close()


def expect(locator):
    """Playwright's web-first assertion (retries until its timeout; no eval, so the page's CSP holds)."""
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def submit(node: WebNode, *command: str) -> int:
    """As a person would: schedctl submit inside the test systemd, as alice."""
    out = node.schedctl("--json", "submit", "--", *command, user=ALICE, cwd="/tmp").stdout
    return json.loads(out)["id"]


def test_dashboard_live_in_chromium(web_node: WebNode, page):
    page.goto(web_node.url + "/")
    page.wait_for_selector("#live.on")  # the SSE stream is connected
    page.evaluate("window.__notReloaded = true")

    # A job submitted with schedctl appears within 1 s, pushed, not polled.
    t0 = time.monotonic()
    jid = submit(web_node, "sh", "-c", "echo hello-$((6 * 7))-from-the-job; sleep 1.5")
    t1 = time.monotonic()
    page.wait_for_selector(f'tr[data-id="{jid}"]', timeout=1000)
    appear_ms, after_return_ms = (time.monotonic() - t0) * 1000, (time.monotonic() - t1) * 1000
    # ...and turns COMPLETED without a reload.
    page.wait_for_selector(f'#recent tr[data-id="{jid}"][data-state="COMPLETED"]', timeout=20_000)
    assert page.evaluate("window.__notReloaded") is True
    print(f"job {jid} appeared on the page {appear_ms:.0f} ms after `schedctl submit` started "
          f"({after_return_ms:.0f} ms after it returned)")

    # Its detail: no output for a viewer without the token.
    page.click(f'#recent tr[data-id="{jid}"]')
    expect(page.locator("#detail-id")).to_have_text(str(jid))
    expect(page.locator("#output-note")).to_contain_text("token")
    assert "hello-42-from-the-job" not in page.inner_text("#output")
    assert "hello-42-from-the-job" not in page.content()

    # Writing without the token is refused, on the page and over HTTP.
    run = submit(web_node, "sleep", "60")
    page.wait_for_selector(f'#running tr[data-id="{run}"]')
    page.click(f'#running button[data-action="cancel"][data-id="{run}"]')
    expect(page.locator("#error")).to_contain_text("token")
    status, body, _ = web_node.http(f"/ui/jobs/{run}/cancel", method="POST")
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    assert web_node.job(run)["State"] == "RUNNING"

    # The cluster's peer token is no dashboard credential: refused on the page and over HTTP.
    page.fill("#token", web_node.token)
    page.click("#auth button[type=submit]")
    expect(page.locator("#authstate")).to_contain_text("wrong token")
    page.click(f'#running button[data-action="cancel"][data-id="{run}"]')
    expect(page.locator("#error")).to_contain_text("admin_token_file")
    status, body, _ = web_node.http(f"/ui/jobs/{run}/cancel", method="POST", token=web_node.token)
    assert status == 403 and json.loads(body)["error"] == "peer-token"
    assert web_node.job(run)["State"] == "RUNNING"
    assert "hello-42-from-the-job" not in page.inner_text("#output")

    # With the operators' token: the output tail is shown, and cancel from the page works.
    page.fill("#token", web_node.admin_token)
    page.click("#auth button[type=submit]")
    page.wait_for_selector('#authstate[data-authorized="yes"]')
    expect(page.locator("#output")).to_contain_text("hello-42-from-the-job")
    page.click(f'#running button[data-action="cancel"][data-id="{run}"]')
    page.wait_for_selector(f'#recent tr[data-id="{run}"][data-state="CANCELLED"]')
    assert web_node.job(run)["State"] == "CANCELLED"

    # A failure shows up with its reason; a queued job shows in the scheduler's order.
    bad = submit(web_node, "sh", "-c", "exit 7")
    page.wait_for_selector(f'#failures tr[data-id="{bad}"]')
    assert "exit-code" in page.inner_text(f'#failures tr[data-id="{bad}"]')
    held = web_node.schedctl("--json", "submit", "--hold", "--", "true", user=ALICE, cwd="/tmp").stdout
    held = json.loads(held)["id"]
    page.wait_for_selector(f'#queue tr[data-id="{held}"][data-state="HELD"]')
    page.click(f'#queue button[data-action="release"][data-id="{held}"]')
    page.wait_for_selector(f'#recent tr[data-id="{held}"][data-state="COMPLETED"]')
    assert "testnode" in page.inner_text("#nodes")

    # For the screenshot: one job running, one queued behind it (it needs both CPUs).
    busy = submit(web_node, "sleep", "30")
    page.wait_for_selector(f'#running tr[data-id="{busy}"]')
    wide = web_node.schedctl("--json", "submit", "--cpus", "2", "--", "true", user=ALICE, cwd="/tmp").stdout
    wide = json.loads(wide)["id"]
    page.wait_for_selector(f'#queue tr[data-id="{wide}"][data-state="PENDING"]')
    page.click(f'#running tr[data-id="{busy}"]')
    expect(page.locator("#detail-id")).to_have_text(str(busy))
    shot = REPO / "artifacts" / "dashboard.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert page.foreign == [], f"the page fetched from elsewhere: {page.foreign}"
    # The refused cancels above log a 401 and a 403 in the console; nothing else may go wrong on the page.
    assert [e for e in page.errors if "401" not in e and "403" not in e] == [], page.errors
    assert page.evaluate("window.__notReloaded") is True
    for j in (wide, busy):
        web_node.manager_call("Cancel", "t", str(j))


def test_dashboard_http_contract(web_node: WebNode):
    status, body, headers = web_node.http("/")
    assert status == 200 and b"/ui/static/app.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for asset in ("app.js", "style.css"):
        assert web_node.http(f"/ui/static/{asset}")[0] == 200
    assert web_node.http("/ui/static/../../etc/passwd")[0] == 404
    assert web_node.http("/ui/static/nope.js")[0] == 404
    status, body, _ = web_node.http("/ui/jobs/abc")
    assert status == 400 and json.loads(body)["error"] == "bad-id"
    assert web_node.http("/ui/jobs/999999")[0] == 404
    jid = web_node.submit(["true"], user=ALICE, Hold=("b", True))
    status, body, _ = web_node.http(f"/ui/jobs/{jid}/explode", method="POST", token=web_node.admin_token)
    assert status == 404 and "cancel, hold, release" in json.loads(body)["message"]
    status, body, _ = web_node.http(f"/ui/jobs/{jid}/hold", method="POST", token="wrong-token-000000000")
    assert status == 401
    status, body, _ = web_node.http(f"/ui/jobs/{jid}/release", method="POST", token=web_node.admin_token)
    assert status == 200 and json.loads(body)["action"] == "release"
    web_node.wait(jid)
    status, body, _ = web_node.http(f"/ui/jobs/{jid}/cancel", method="POST", token=web_node.admin_token)
    assert status == 409 and "already COMPLETED" in json.loads(body)["message"]
    state = json.loads(web_node.http("/ui/state")[1])
    assert {"queue", "waiting", "running", "recent", "failures", "nodes", "counts"} <= set(state)
