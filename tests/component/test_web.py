"""The admin console over a real rig: real studies through SCP, worker and PACS stand-in, a
real SQLite file, the ASGI app driven by Starlette's TestClient (HTTPS base URL, so the
Secure cookies travel). Every page and API: authentication, roles, CSRF, filters, exports,
the study page, metrics and health."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from starlette.testclient import TestClient

from scpnode.app import open_database
from scpnode.audit_views import list_studies
from scpnode.clock import utcnow
from scpnode.config import load_settings
from scpnode.db.models import AuditEventRow, DeliveryRow, WebSessionRow
from scpnode.ingest import Recorder
from scpnode.pacs_standin import PacsStandIn
from scpnode.receive.server import ReceiveServer
from scpnode.spool import Spool
from scpnode.synth import iter_study_datasets, make_study_spec
from scpnode.web.app import create_app
from scpnode.web.users import Role, add_user
from scpnode.worker import build_worker
from tests.component.conftest import Rig, config_text
from tests.system.peers import free_port

PASSWORD = "correct horse battery"
XSS = '<script>alert("x")</script>'
PAGES = ["/", "/studies", "/associations", "/deliveries", "/audit", "/models"]


@dataclass
class Site:
    rig: Rig
    app: Any
    delivered: str
    failed: str
    hostile: str

    def client(self, user: str | None = None) -> TestClient:
        client = TestClient(self.app, base_url="https://testserver", follow_redirects=False)
        if user is not None:
            login(client, user, PASSWORD)
        return client

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self.rig.worker.ctx.db.session() as s:
            rows = s.scalars(select(AuditEventRow).where(AuditEventRow.kind == kind))
            return [json.loads(e.detail) for e in rows]


def login(client: TestClient, user: str, password: str, **extra: str) -> Any:
    assert client.get("/login").status_code == 200
    token = client.cookies.get("scpnode_login")
    data = {"username": user, "password": password, "csrf_token": token, "next": "/", **extra}
    return client.post("/login", data=data)


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def _send(rig: Rig, seed: int, *, hostile: bool = False, calling: str = "CT01") -> str:
    spec = make_study_spec(seed, n_slices=12)
    datasets = list(iter_study_datasets(spec))
    if hostile:  # a scanner that sends markup where text belongs
        for ds in datasets:
            ds.SeriesDescription = f"CHEST {XSS}"[:64]
            ds.PatientName = "<img src=x onerror=alert(1)>"
    assert rig.send(datasets, calling=calling) == [0] * 12
    return spec.study_instance_uid


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, random_weights: Path) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web")
    pacs_port = free_port()
    pacs = PacsStandIn(tmp / "pacs", "PACS", require_called_aet=True)
    pacs.start(port=pacs_port)
    (tmp / "node.toml").write_text(config_text(tmp, random_weights, pacs_port))
    settings = load_settings(tmp / "node.toml", env={})
    db = open_database(settings)
    recorder = Recorder(db)
    recorder.start()
    scp = ReceiveServer(
        settings.node, Spool(settings.storage.spool_dir, min_free_mb=1), recorder.submit
    )
    rig = Rig(settings, scp, recorder, build_worker(settings), pacs, pacs_port, scp.start(port=0))
    delivered = _send(rig, 81)
    rig.complete_and_process()
    hostile = _send(rig, 82, hostile=True, calling="CT<i>2")
    rig.complete_and_process()
    pacs.answer = 0xC000  # the PACS refuses the next report for good
    failed = _send(rig, 83, calling="CT02")
    rig.complete_and_process()
    pacs.answer = 0x0000
    with db.session() as s:
        add_user(s, "admin", Role.ADMIN, PASSWORD, now=utcnow(), actor="test")
        add_user(s, "viewer", Role.VIEWER, PASSWORD, now=utcnow(), actor="test")
    yield Site(rig, create_app(settings, db), delivered, failed, hostile)
    scp.stop(5)
    recorder.stop()
    pacs.stop()


# --- authentication ---------------------------------------------------------------------------
def test_pages_redirect_to_sign_in_and_data_answers_401_without_a_session(site: Site) -> None:
    anon = site.client()
    for path in [*PAGES, f"/studies/{site.delivered}"]:
        rsp = anon.get(path)
        assert rsp.status_code == 303, path
        assert rsp.headers["location"].startswith("/login?next=")
    sr = site.rig.studies()[site.delivered]["sr_sop_instance_uid"]
    for path in ["/studies.csv", "/studies.json", f"/studies/{site.delivered}/sr/{sr}.dcm"]:
        assert anon.get(path).status_code == 401, path
    for path in ["/deliveries/1/retry", "/deliveries/retry-failed", "/audit/verify", "/logout"]:
        assert anon.post(path, data={"csrf_token": "x"}).status_code == 401, path


def test_probes_answer_without_credentials_and_metrics_parse(site: Site) -> None:
    anon = site.client()
    assert anon.get("/healthz").text == "ok\n"
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert set(ready.json()["checks"]) == {"database", "spool", "model"}
    text = anon.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert value[("scpnode_instances_received_total", ())] == 36
    assert value[("scpnode_associations_total", (("outcome", "released"),))] == 3
    assert value[("scpnode_studies", (("status", "failed"),))] == 1
    assert value[("scpnode_deliveries", (("status", "delivered"),))] == 2
    assert value[("scpnode_delivery_attempts_total", (("outcome", "permanent"),))] == 1
    assert value[("scpnode_report_latency_seconds_count", ())] == 2
    assert value[("scpnode_inference_slices_total", ())] == 36
    assert value[("scpnode_spool_free_bytes", ())] > 0
    assert families["scpnode_report_latency_seconds"].type == "histogram"
    assert "PHANTOM" not in text and "SYN-" not in text  # no patient data in metrics


def test_sign_in_sets_a_hardened_cookie_and_sign_out_ends_the_session(site: Site) -> None:
    client = site.client()
    rsp = login(client, "viewer", PASSWORD)
    assert rsp.status_code == 303 and rsp.headers["location"] == "/"
    cookie = next(h for h in rsp.headers.get_list("set-cookie") if "scpnode_session=" in h)
    assert {"HttpOnly", "Secure", "SameSite=strict"} <= {p.strip() for p in cookie.split(";")}
    token = client.cookies.get("scpnode_session")
    page = client.get("/")
    assert page.status_code == 200 and "viewer (viewer)" in page.text
    assert client.post("/logout", data={"csrf_token": csrf(page.text)}).status_code == 303
    replay = site.client()
    replay.cookies.set("scpnode_session", token)
    assert replay.get("/").status_code == 303  # the old cookie is worthless now
    assert {"user": "viewer"}.items() <= site.events("user_logout")[-1].items()


def test_wrong_password_is_refused_and_audited_then_throttled(site: Site) -> None:
    client = site.client()
    rsp = login(client, "nobody", "wrong password!")
    assert rsp.headers["location"].endswith("error=denied")
    assert "Wrong name or password." in client.get(rsp.headers["location"]).text
    assert site.events("user_login_failed")[-1]["user"] == "nobody"
    for _ in range(5):
        login(client, "admin", "wrong password!")
    rsp = login(client, "admin", PASSWORD)  # right, but too many failures just before
    assert rsp.headers["location"].endswith("error=throttled")
    site.app.state.console.throttle.succeeded(("user:admin", "ip:testclient"))


def test_sign_in_form_needs_its_token_and_next_stays_local(site: Site) -> None:
    client = site.client()
    client.get("/login")
    data = {"username": "admin", "password": PASSWORD, "next": "/"}
    assert client.post("/login", data=data).status_code == 403  # no token: login CSRF refused
    rsp = login(site.client(), "admin", PASSWORD, next="//evil.example/x")
    assert rsp.headers["location"] == "/"


def test_expired_and_idle_sessions_end(site: Site) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    client = site.client("viewer")
    assert client.get("/").status_code == 200
    with site.rig.worker.ctx.db.session() as s:
        s.execute(update(WebSessionRow).values(last_seen_at=utcnow() - timedelta(hours=1)))
    assert client.get("/").status_code == 303  # idle longer than web.session_idle_min


# --- pages ------------------------------------------------------------------------------------
def test_every_page_renders_for_a_viewer_with_security_headers(site: Site) -> None:
    viewer = site.client("viewer")
    for path in PAGES:
        rsp = viewer.get(path)
        assert rsp.status_code == 200, path
        assert "script-src 'none'" in rsp.headers["content-security-policy"]
        assert rsp.headers["cache-control"] == "no-store"
        assert rsp.headers["x-frame-options"] == "DENY"
    dashboard = viewer.get("/").text
    assert re.search(r'id="studies-today">3<', dashboard)
    assert re.search(r'id="delivery-failures">1<', dashboard)
    models = viewer.get("/models").text
    assert "Weights match their card" in models and "ctnet10" in models
    deliveries = viewer.get("/deliveries").text  # the retry shows; the server refuses it
    assert 'class="retry readonly"' in deliveries and 'id="retry-all"' not in deliveries
    assert "Verify the chain now" not in viewer.get("/audit").text


def test_study_page_shows_plot_series_sr_tree_timeline_and_attempts(site: Site) -> None:
    page = site.client("viewer").get(f"/studies/{site.delivered}").text
    assert '<svg class="plot"' in page and 'class="plot-threshold"' in page
    row = site.rig.show(site.delivered)
    keys = page.count('class="plot-key"')
    assert 1 <= keys <= 5  # the key slices the SR references
    assert page.count('class="plot-point"') + keys == row["results"][-1]["n_slices"]
    assert 'class="analysed"' in page and "<strong>analysed</strong>" in page
    assert "COVID-19 (840539006, SCT)" in page and "Probability (122157, DCM)" in page
    for kind in ("association_released", "series_selected", "study_result", "delivered"):
        assert f"<td>{kind}</td>" in page
    failed = site.client("viewer").get(f"/studies/{site.failed}").text
    assert "permanent 0xC000" in failed


def test_scanner_text_is_escaped_everywhere(site: Site) -> None:
    viewer = site.client("viewer")
    for path in ["/studies", f"/studies/{site.hostile}", "/associations", "/audit"]:
        page = viewer.get(path).text
        assert "<script>alert" not in page and "<i>2" not in page, path
        assert "<img src=x" not in page, path
    assert "&lt;script&gt;" in viewer.get(f"/studies/{site.hostile}").text
    assert "CT&lt;i&gt;2" in viewer.get("/studies").text


def test_sr_download_is_the_outbox_file_and_is_audited(site: Site) -> None:
    row = site.rig.show(site.delivered)
    report = row["reports"][0]
    client = site.client("viewer")
    rsp = client.get(f"/studies/{site.delivered}/sr/{report['sop_instance_uid']}.dcm")
    assert rsp.status_code == 200 and rsp.headers["content-type"] == "application/dicom"
    assert rsp.content == Path(report["path"]).read_bytes()
    assert site.events("sr_downloaded")[-1]["actor"] == "web:viewer"
    other = client.get(f"/studies/{site.failed}/sr/{report['sop_instance_uid']}.dcm")
    assert other.status_code == 404  # an SR is only found under its own study
    assert client.get("/studies/1.2.3.999").status_code == 404


# --- studies: filters, sorting, exports ---------------------------------------------------------
def _uids(html: str) -> list[str]:
    return re.findall(r'<td class="uid"><a href="/studies/([0-9.]+)">', html)


def test_studies_filters_match_the_cli_read_model(site: Site) -> None:
    viewer = site.client("viewer")
    assert _uids(viewer.get("/studies?status=failed").text) == [site.failed]
    assert _uids(viewer.get("/studies?calling_aet=CT02").text) == [site.failed]
    assert set(_uids(viewer.get("/studies?status=delivered").text)) == {
        site.delivered,
        site.hostile,
    }
    assert _uids(viewer.get("/studies?until=2000-01-01").text) == []
    today = utcnow().date().isoformat()
    assert len(_uids(viewer.get(f"/studies?since={today}&until={today}").text)) == 3
    rows = site.rig.studies()
    by_p = sorted(rows.values(), key=lambda r: r["probability"])
    asc = _uids(viewer.get("/studies?sort=probability&dir=asc").text)
    assert asc == [r["study_instance_uid"] for r in by_p]
    middle = by_p[1]["probability"]
    narrow = viewer.get(f"/studies?min_p={middle - 1e-9}&max_p={middle + 1e-9}").text
    assert _uids(narrow) == [by_p[1]["study_instance_uid"]]
    label = rows[site.failed]["label"]
    labelled = _uids(viewer.get(f"/studies?label={label}").text)
    assert site.failed in labelled
    bad = viewer.get("/studies?min_p=2&since=yesterday").text
    assert "min_p: a probability between 0 and 1" in bad and "since: not a date" in bad


def test_exports_carry_the_filtered_set(site: Site) -> None:
    viewer = site.client("viewer")
    rsp = viewer.get("/studies.json?status=delivered&sort=received&dir=asc")
    assert rsp.headers["content-disposition"].startswith("attachment")
    exported = rsp.json()
    with site.rig.worker.ctx.db.session() as s:
        expected = [r for r in list_studies(s) if r["status"] == "delivered"]
    assert exported == json.loads(json.dumps(expected))  # the `audit studies --json` shape
    table = list(csv.DictReader(io.StringIO(viewer.get("/studies.csv?calling_aet=CT02").text)))
    assert [r["study_instance_uid"] for r in table] == [site.failed]
    assert table[0]["status"] == "failed" and table[0]["deliveries"] == "pacs:failed(1)"
    assert viewer.get("/studies.csv?max_p=7").status_code == 400


# --- actions: roles, CSRF, audit --------------------------------------------------------------
def _failed_delivery_id(site: Site) -> int:
    with site.rig.worker.ctx.db.session() as s:
        return int(s.scalar(select(DeliveryRow.id).where(DeliveryRow.state == "failed")))


def test_a_viewer_is_refused_every_action_with_403(site: Site) -> None:
    viewer = site.client("viewer")
    token = csrf(viewer.get("/").text)
    delivery = _failed_delivery_id(site)
    for path in [f"/deliveries/{delivery}/retry", "/deliveries/retry-failed", "/audit/verify"]:
        rsp = viewer.post(path, data={"csrf_token": token})
        assert rsp.status_code == 403 and "admin role" in rsp.text, path
    assert _failed_delivery_id(site) == delivery  # nothing changed


def test_actions_need_the_session_csrf_token_and_same_origin(site: Site) -> None:
    admin = site.client("admin")
    token = csrf(admin.get("/deliveries").text)
    delivery = _failed_delivery_id(site)
    path = f"/deliveries/{delivery}/retry"
    assert admin.post(path).status_code == 403
    assert admin.post(path, data={"csrf_token": "forged"}).status_code == 403
    assert csrf(site.client("viewer").get("/").text) != token  # per session
    cross = admin.post(path, data={"csrf_token": token}, headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    assert _failed_delivery_id(site) == delivery


def test_an_admin_retries_a_failed_delivery_and_it_lands(site: Site) -> None:
    admin = site.client("admin")
    page = admin.get(f"/studies/{site.failed}").text
    delivery = _failed_delivery_id(site)
    assert f'id="retry-{delivery}"' in page
    rsp = admin.post(
        f"/deliveries/{delivery}/retry",
        data={"csrf_token": csrf(page), "back": f"/studies/{site.failed}"},
    )
    assert rsp.status_code == 303 and rsp.headers["location"] == f"/studies/{site.failed}?done=1"
    event = site.events("delivery_requeued")[-1]
    assert event["actor"] == "web:admin" and event["delivery_id"] == delivery
    site.rig.worker.deliverer.run_once()
    assert site.rig.studies()[site.failed]["status"] == "delivered"
    assert "Re-queued 1 deliveries." in admin.get(rsp.headers["location"]).text


def test_an_admin_verifies_the_audit_chain(site: Site) -> None:
    admin = site.client("admin")
    page = admin.get("/audit").text
    rsp = admin.post("/audit/verify", data={"csrf_token": csrf(page)})
    assert rsp.status_code == 303
    site.app.state.console.verifier.wait()
    assert "Hash chain intact" in admin.get("/audit").text
    assert site.events("chain_verified")[-1]["actor"] == "web:admin"


def test_pages_of_other_kinds_filter(site: Site) -> None:
    viewer = site.client("viewer")
    assert "CT02" in viewer.get("/associations?calling_aet=CT02").text
    assert "No association matches." in viewer.get("/associations?outcome=aborted").text
    events = viewer.get("/audit?kind=user_added").text
    assert events.count("<td>user_added</td>") == 2
    assert "No delivery." in viewer.get("/deliveries?status=expired").text


# --- CLI parity ---------------------------------------------------------------------------------
def _cli(site: Site, capsys: pytest.CaptureFixture[str], *args: str, stdin: str = "") -> str:
    import sys

    from scpnode.cli import main

    capsys.readouterr()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        assert main([*args, "--config", str(site.rig.settings.source)]) == 0
    finally:
        sys.stdin = saved
    return capsys.readouterr().out


def test_cli_studies_take_the_pages_filters_and_print_a_table(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    viewer = site.client("viewer")
    for query, flags in (
        ("status=failed", ["--status", "failed"]),
        ("calling_aet=CT02", ["--calling-aet", "CT02"]),
        (
            "status=delivered&sort=probability&dir=asc",
            ["--status", "delivered", "--sort", "probability"],
        ),
        ("until=2000-01-01", ["--until", "2000-01-01"]),
    ):
        shown = json.loads(_cli(site, capsys, "audit", "studies", "--json", *flags))
        assert [r["study_instance_uid"] for r in shown] == _uids(
            viewer.get(f"/studies?{query}").text
        )
    table = _cli(site, capsys, "audit", "studies", "--calling-aet", "CT02")
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["STUDY", "FROM", "N", "STATUS"]
    assert [ln.split()[:3] for ln in lines[2:]] == [[site.failed, "CT02", "12"]]
    assert "pacs:" in lines[2]  # deliveries as destination:status(attempts)
    assert "(none)" in _cli(site, capsys, "audit", "studies", "--until", "2000-01-01")


def test_cli_associations_match_the_page(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(
        _cli(site, capsys, "audit", "associations", "--calling-aet", "CT02", "--json")
    )
    assert [r["calling_aet"] for r in rows] == ["CT02"] and rows[0]["instances"] == 12
    table = _cli(site, capsys, "audit", "associations")
    assert table.splitlines()[0].split()[:3] == ["STARTED", "FROM", "PEER"]
    assert "CT<i>2" in table  # printed as sent, not read as markup


def test_cli_users_add_hashes_the_password_and_the_new_user_signs_in(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    from scpnode.db.models import UserRow

    out = _cli(
        site,
        capsys,
        "users",
        "add",
        "clerk",
        "--role",
        "viewer",
        "--password-stdin",
        stdin="another long secret\n",
    )
    assert "user clerk added (viewer)" in out
    with site.rig.worker.ctx.db.session() as s:
        stored = s.scalar(select(UserRow.password_hash).where(UserRow.name == "clerk"))
    assert stored is not None and stored.startswith("$argon2id$")
    assert "another long secret" not in stored
    assert site.events("user_added")[-1]["actor"].startswith("cli:")
    client = site.client()
    assert login(client, "clerk", "another long secret").status_code == 303
    assert "clerk (viewer)" in client.get("/").text
    listed = json.loads(_cli(site, capsys, "users", "list", "--json"))
    assert {u["name"]: u["role"] for u in listed}["clerk"] == "viewer"
