"""The admin console in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by selenium; nothing downloaded) against `scpnode serve` with the
console enabled, studies sent in by dcmtk `storescu`, reports delivered to a PACS stand-in
that refuses one of them. Screenshots of every step go to `$SCPNODE_SCREENSHOTS` (CI keeps
them as artifacts), or to a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from scpnode.pacs_standin import PacsStandIn
from scpnode.synth import make_study_spec, write_study
from tests.conftest import need
from tests.system.peers import ServeProcess, free_port, wait_until
from tests.system.test_serve import storescu

pytestmark = pytest.mark.system
PASSWORD = "a browser test password"
WAIT_S = 30  # every browser wait is bounded by this


@dataclass
class Console:
    serve: ServeProcess
    pacs: PacsStandIn
    base: str
    shots: Path
    downloads: Path
    delivered: str
    failed: str


def _chromium() -> tuple[str, str]:
    found = [Path(p) for p in ("/usr/bin/chromium", "/usr/bin/chromedriver")]
    if not all(p.is_file() for p in found):
        pytest.skip("chromium and chromium-driver not installed (apt-get install them)")
    return str(found[0]), str(found[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening yet
        return 0, ""


def _add_user(serve: ServeProcess, name: str, role: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "scpnode",
            "users",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "--config",
            str(serve.config),
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


def _status(serve: ServeProcess, uid: str) -> str | None:
    rows = {r["study_instance_uid"]: r for r in serve.studies()}
    return rows[uid]["status"] if uid in rows else None


def _send(serve: ServeProcess, root: Path, seed: int, covid: bool, aet: str, want: str) -> str:
    spec = make_study_spec(seed, covid=covid, n_slices=16)
    write_study(spec, root / f"study{seed}")
    storescu(serve, root / f"study{seed}", aet=aet)
    uid = spec.study_instance_uid
    wait_until(lambda: _status(serve, uid) == want, 180, f"study {seed} to be {want}")
    return uid


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, demo_weights: Path) -> Iterator[Console]:
    need("storescu")
    _chromium()
    root = tmp_path_factory.mktemp("webui")
    shots = Path(os.environ.get("SCPNODE_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    pacs = PacsStandIn(root / "pacs", "PACS")
    pacs_port = pacs.start()
    node_port, web_port = free_port(), free_port()
    config = root / "node.toml"
    config.write_text(f"""
[node]
host = "127.0.0.1"
port = {node_port}
[storage]
spool_dir = "spool"
min_free_mb = 64
[database]
url = "sqlite:///node.db"
[study]
association_grace_s = 1.0
[model]
allow_synthetic = true
[worker]
poll_interval_s = 0.2
[delivery]
retry_initial_s = 1
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
[web]
enabled = true
host = "127.0.0.1"
port = {web_port}
""")
    serve = ServeProcess(config, node_port)
    serve.start()
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(lambda: _get(f"{base}/healthz")[0] == 200, 60, "the console to answer")
        _add_user(serve, "admin", "admin")
        _add_user(serve, "viewer", "viewer")
        delivered = _send(serve, root, 21, True, "CT01", "delivered")
        pacs.answer = 0xC000  # the PACS refuses the next report for good
        failed = _send(serve, root, 22, False, "CT02", "failed")
        pacs.answer = 0x0000
        yield Console(serve, pacs, base, shots, root / "downloads", delivered, failed)
    finally:
        code = serve.stop()
        pacs.stop()
    assert code == 0, "serve (and its console) must exit 0 on SIGTERM"


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    console.downloads.mkdir(exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(console.downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_S)
    driver.implicitly_wait(5)  # find_element retries this long while a page loads
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(console.downloads)}
    )
    yield driver
    driver.quit()


def _shot(browser: Any, console: Console, name: str) -> None:
    """A full-page screenshot (the window grows to the page's height first)."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(int(height), 700), 4000))
    assert browser.save_screenshot(str(console.shots / f"{name}.png"))
    browser.set_window_size(1280, 1000)


def _sign_in(browser: Any, console: Console, user: str, target: str = "/") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.delete_all_cookies()
    browser.get(console.base + target)
    WebDriverWait(browser, WAIT_S).until(lambda d: "/login" in d.current_url)
    browser.find_element(By.ID, "username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: (
            d.find_elements(By.ID, "whoami")
            and d.find_element(By.ID, "whoami").text
            == f"{user} ({'admin' if user == 'admin' else 'viewer'})"
        )
    )


def test_without_a_session_pages_go_to_sign_in_and_data_is_401(
    console: Console, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{console.base}/studies?status=failed")
    assert "/login?next=" in browser.current_url and browser.find_elements(By.ID, "sign-in")
    _shot(browser, console, "01-sign-in")
    assert _get(f"{console.base}/studies.json")[0] == 401
    assert _get(f"{console.base}/studies/{console.delivered}")[0] == 200  # the form, after 303
    status, text = _get(f"{console.base}/metrics")
    assert status == 200 and "scpnode_instances_received_total 32" in text
    status, text = _get(f"{console.base}/readyz")
    assert status == 200 and json.loads(text)["ready"] is True


def test_a_viewer_signs_in_filters_and_opens_a_study_with_its_plot(
    console: Console, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _sign_in(browser, console, "viewer")
    _shot(browser, console, "02-dashboard")
    browser.get(f"{console.base}/studies")
    rows = browser.find_elements(By.CSS_SELECTOR, "#studies td.uid a")
    assert {r.text for r in rows} == {console.delivered, console.failed}
    _shot(browser, console, "03-studies")
    field = browser.find_element(By.ID, "f-calling-aet")
    field.send_keys("CT01")
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "calling_aet=CT01" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#studies td.uid a")
    assert [r.text for r in rows] == [console.delivered]
    _shot(browser, console, "04-studies-filtered")
    rows[0].click()
    WebDriverWait(browser, WAIT_S).until(lambda d: console.delivered in d.current_url)
    plot = browser.find_element(By.CSS_SELECTOR, "svg.plot")
    assert plot.is_displayed() and plot.size["width"] > 300
    assert len(plot.find_elements(By.CSS_SELECTOR, "circle.plot-point, circle.plot-key")) == 16
    assert plot.find_elements(By.CSS_SELECTOR, "circle.plot-key")  # key slices marked
    assert plot.find_elements(By.CSS_SELECTOR, "line.plot-threshold")
    assert "COVID-19" in browser.find_element(By.ID, "sr-tree").text
    timeline = browser.find_element(By.ID, "timeline").text
    assert "study_result" in timeline and "delivered" in timeline
    _shot(browser, console, "05-study")


def test_the_viewer_downloads_the_sr_it_is_the_delivered_object(
    console: Console, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, console, "viewer", f"/studies/{console.delivered}")
    row = next(r for r in console.serve.studies() if r["study_instance_uid"] == console.delivered)
    browser.find_element(By.ID, "download-1").click()
    target = console.downloads / f"{row['sr_sop_instance_uid']}.dcm"
    wait_until(lambda: target.is_file() and target.stat().st_size > 0, WAIT_S, "the SR download")
    ds = pydicom.dcmread(target)
    assert ds.SOPInstanceUID == row["sr_sop_instance_uid"]
    shown = json.loads(console.serve.cli("audit", "show", console.delivered, "--json"))
    (report,) = [r for r in shown["reports"] if r["sop_instance_uid"] == ds.SOPInstanceUID]
    assert Path(report["path"]).read_bytes() == target.read_bytes()  # the bytes that were sent
    assert (console.pacs.root / console.delivered / target.name).is_file()  # and arrived
    events = json.loads(
        console.serve.cli("audit", "events", "--study", console.delivered, "--json")
    )
    assert any(
        e["kind"] == "sr_downloaded" and e["detail"]["actor"] == "web:viewer" for e in events
    )


def test_the_viewer_is_refused_a_retry_and_the_admin_retries_it(
    console: Console, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _sign_in(browser, console, "viewer", "/deliveries?status=failed")
    button = browser.find_element(By.CSS_SELECTOR, "button.retry")
    button.click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.title.startswith("Forbidden"))
    assert "viewer is a viewer; this action needs the admin role" in browser.page_source
    _shot(browser, console, "06-refused-as-viewer")
    logged = [e["message"] for e in browser.get_log("browser")]  # read and cleared
    assert logged and all("403" in m for m in logged), logged
    assert _status(console.serve, console.failed) == "failed"

    _sign_in(browser, console, "admin", f"/studies/{console.failed}")
    assert "failed" in browser.find_element(By.ID, "study-status").text
    browser.find_element(By.CSS_SELECTOR, "button.retry").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: (
            d.find_elements(By.ID, "done") and "Re-queued 1" in d.find_element(By.ID, "done").text
        )
    )
    wait_until(lambda: _status(console.serve, console.failed) == "delivered", 60, "the retry")
    browser.refresh()
    assert "delivered" in browser.find_element(By.ID, "study-status").text
    _shot(browser, console, "07-retried-as-admin")
    events = json.loads(console.serve.cli("audit", "events", "--study", console.failed, "--json"))
    assert any(
        e["kind"] == "delivery_requeued" and e["detail"]["actor"] == "web:admin" for e in events
    )


def test_every_other_page_renders_and_the_admin_verifies_the_chain(
    console: Console, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _sign_in(browser, console, "admin")
    for n, (path, heading) in enumerate(
        [
            ("/associations", "Associations"),
            ("/deliveries", "Deliveries"),
            ("/audit", "Audit"),
            ("/models", "Models"),
            ("/", "Dashboard"),
        ],
        start=8,
    ):
        browser.get(console.base + path)
        assert browser.find_element(By.TAG_NAME, "h1").text.startswith(heading), path
        _shot(browser, console, f"{n:02d}-{heading.lower()}")
    browser.get(f"{console.base}/audit")
    browser.find_element(By.ID, "verify").click()

    def verified(driver: Any) -> bool:
        driver.get(f"{console.base}/audit")
        return "Hash chain intact" in driver.find_element(By.ID, "chain-status").text

    WebDriverWait(browser, WAIT_S, poll_frequency=1).until(verified)
    assert "by web:admin" in browser.find_element(By.ID, "chain-status").text
    _shot(browser, console, "13-audit-verified")
    errors = [e["message"] for e in browser.get_log("browser")]
    assert errors == []  # no console errors (CSP violations and missing files show there)
