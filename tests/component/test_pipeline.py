"""Receive → complete → analyse → report → deliver, in process, over real associations.

The model is a randomly initialised CTnet-10 with its own card (decisions are meaningless
here; the system tests and the demo check decisions with the trained demo weights). The PACS
is the stand-in storage SCP on loopback, so tests can take it down, make it refuse, or reject.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select, update

from scpnode.app import open_database
from scpnode.audit_views import list_studies, show_study
from scpnode.clock import utcnow
from scpnode.config import load_settings
from scpnode.db.models import DeliveryRow
from scpnode.reconcile import reconcile
from scpnode.spool import Spool
from scpnode.synth import (
    dose_report_dataset,
    extra_series,
    iter_study_datasets,
    localizer_dataset,
    make_study_spec,
    screenshot_dataset,
)
from tests.component.conftest import config_text

SLICES = 12


def test_study_is_analysed_reported_and_delivered(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(21, covid=True, n_slices=SLICES)
    extras = [dose_report_dataset(spec), screenshot_dataset(spec)]
    assert rig.send(list(iter_study_datasets(spec)) + extras) == [0] * (SLICES + 2)
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "delivered" and row["received_instances"] == SLICES + 2
    assert row["label"] in ("covid19", "non_covid19") and 0 <= row["probability"] <= 1
    assert row["model"] == "ctnet10-test@0.0.1"
    assert row["deliveries"] == [
        {
            "destination": "pacs",
            "status": "delivered",
            "attempts": 1,
            "last_error": None,
            "last_status": "0x0000",
            "delivered_at": row["deliveries"][0]["delivered_at"],
        }
    ]
    (sr_path,) = rig.pacs.received
    sr = pydicom.dcmread(sr_path)
    assert sr.SOPInstanceUID == row["sr_sop_instance_uid"]
    assert sr.StudyInstanceUID == spec.study_instance_uid and sr.PatientID == spec.patient_id
    shown = rig.show(spec.study_instance_uid)
    (result,) = shown["results"]
    assert (
        result["n_slices"] == SLICES and result["series_instance_uid"] == spec.series_instance_uid
    )
    zs = [s["z"] for s in result["slices"]]
    assert zs == sorted(zs) or zs == sorted(zs, reverse=True)  # in patient order, not send order
    assert result["threshold_source"] == "model card" and result["threshold"] == 0.5
    kinds = [e["kind"] for e in shown["events"]]
    for kind in (
        "association_accepted",
        "instance_stored",
        "study_complete",
        "job_claimed",
        "series_selected",
        "inference_done",
        "study_result",
        "sr_created",
        "delivered",
    ):
        assert kind in kinds


def test_only_a_changed_selected_series_is_reprocessed(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(22, covid=False, finding="normal", n_slices=SLICES)
    datasets = list(iter_study_datasets(spec))
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    rig.send(datasets[:-2])
    rig.complete_and_process(after_s=61)  # two slices short: only the idle timer completes it
    first = rig.studies()[spec.study_instance_uid]
    assert first["status"] == "delivered"
    # the same instances again, and a second (soft-kernel) series: the selection is unchanged
    rig.send(datasets[:3])
    rig.send(list(iter_study_datasets(extra_series(spec, kernel="B30f", thickness=3.0))))
    rig.complete_and_process(after_s=61)
    same = rig.studies()[spec.study_instance_uid]
    assert same["status"] == "delivered"
    assert same["sr_sop_instance_uid"] == first["sr_sop_instance_uid"]
    assert any(e["kind"] == "study_unchanged" for e in rig.show(spec.study_instance_uid)["events"])
    # the selected series gains its last two slices: a new SR version, same series
    rig.send(datasets[-2:])
    rig.complete_and_process()
    second = rig.studies()[spec.study_instance_uid]
    assert second["status"] == "delivered"
    assert second["sr_sop_instance_uid"] != first["sr_sop_instance_uid"]
    old, new = (pydicom.dcmread(p) for p in rig.pacs.received)
    assert new.SeriesInstanceUID == old.SeriesInstanceUID and new.InstanceNumber == 2
    predecessor = new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert len(rig.show(spec.study_instance_uid)["results"]) == 2


def test_localizer_only_chest_study_is_not_analysed_with_an_sr(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(23, n_slices=SLICES)
    rig.send([localizer_dataset(spec)])
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "not_analysed" and "localizer" in row["reason"]
    assert row["deliveries"][0]["status"] == "delivered"
    sr = pydicom.dcmread(rig.pacs.received[0])
    assert "NOT ANALYSED" in sr.SeriesDescription


def test_undecodable_pixels_end_not_analysed(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(24, n_slices=SLICES)
    datasets = list(iter_study_datasets(spec))
    for ds in datasets:
        ds.PixelData = ds.PixelData[:100]  # header fine, pixels truncated
    assert rig.send(datasets) == [0] * SLICES  # acknowledged: stored as received
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "not_analysed" and "undecodable" in row["reason"]


def test_an_unusable_rescale_ends_not_analysed_with_its_reason(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(25, n_slices=SLICES)
    datasets = list(iter_study_datasets(spec))
    datasets[2].RescaleIntercept = ["-1024", "0"]  # two values where one number belongs
    assert rig.send(datasets) == [0] * SLICES  # acknowledged: stored as received
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "not_analysed"
    assert "unusable Rescale Slope / Intercept (1" in row["reason"]


def test_pacs_down_is_retried_until_it_comes_back(make_rig: Any) -> None:
    rig = make_rig(start_pacs=False)
    spec = make_study_spec(25, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "reported"
    (delivery,) = row["deliveries"]
    assert delivery["status"] == "pending" and delivery["attempts"] == 1
    assert "not reachable" in delivery["last_error"]
    rig.pacs.start(port=rig.pacs_port)
    rig.pacs.answer = 0xA700  # up, but out of resources: still transient
    time.sleep(0.7)
    rig.worker.deliverer.run_once()
    assert rig.studies()[spec.study_instance_uid]["deliveries"][0]["last_status"] == "0xA700"
    rig.pacs.answer = 0x0000
    time.sleep(0.7)
    rig.worker.deliverer.run_once()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "delivered" and row["deliveries"][0]["attempts"] == 3
    attempts = rig.show(spec.study_instance_uid)["reports"][0]["deliveries"][0]["attempt_log"]
    assert [a["outcome"] for a in attempts] == ["transient", "transient", "delivered"]


def test_permanent_rejection_fails_without_retrying(make_rig: Any) -> None:
    rig = make_rig(pacs_aet="OTHER")  # our destination says PACS: called AE not recognised
    spec = make_study_spec(26, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "failed"
    (delivery,) = row["deliveries"]
    assert (
        delivery["status"] == "failed"
        and "called AE title not recognised (permanent)" in delivery["last_error"]
    )
    time.sleep(0.7)
    assert rig.worker.deliverer.run_once() == 0  # not retried blindly


def test_undelivered_report_expires(make_rig: Any) -> None:
    rig = make_rig(start_pacs=False)
    spec = make_study_spec(27, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.complete_and_process()
    with rig.worker.ctx.db.session() as s:
        s.execute(
            update(DeliveryRow).values(
                expires_at=utcnow() - timedelta(seconds=1), next_attempt_at=utcnow()
            )
        )
    rig.worker.deliverer.run_once()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "expired" and row["deliveries"][0]["status"] == "expired"


def test_spool_files_without_rows_are_reconciled(tmp_path: Path, random_weights: Path) -> None:
    settings = load_settings(_write(tmp_path, config_text(tmp_path, random_weights, 1)), env={})
    db = open_database(settings)
    spool = Spool(settings.storage.spool_dir)
    spool.prepare()
    spec = make_study_spec(28, n_slices=3)
    for ds in iter_study_datasets(spec):  # as if the node died before recording them
        target = spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
    assert reconcile(db, spool) == 3
    assert reconcile(db, spool) == 0
    with db.session() as s:
        (row,) = list_studies(s)
        events = show_study(s, spec.study_instance_uid)["events"]  # type: ignore[index]
    assert row["received_instances"] == 3 and row["status"] == "receiving"
    assert [e["kind"] for e in events].count("instance_reconciled") == 3
    with db.session() as s:
        assert s.scalars(select(DeliveryRow)).all() == []


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "node.toml"
    path.write_text(text)
    return path


SR_3D, SR = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.mark.parametrize("how", ["not negotiated", "0x0122"])
def test_pacs_without_comprehensive_3d_sr_gets_comprehensive_sr(make_rig: Any, how: str) -> None:
    rig = make_rig(pacs_without=(SR_3D,) if how == "not negotiated" else ())
    if how == "0x0122":
        rig.pacs.unsupported.add(SR_3D)
    spec = make_study_spec(29, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "delivered"
    (received,) = rig.pacs.received
    sr = pydicom.dcmread(received)
    assert sr.SOPClassUID == SR and sr.SOPInstanceUID != row["sr_sop_instance_uid"]
    assert sr.ContentSequence  # the same coded content
    outbox = pydicom.dcmread(rig.show(spec.study_instance_uid)["reports"][0]["path"])
    assert outbox.SOPClassUID == SR_3D  # what we stored stays what we built
    assert len(sr.ContentSequence) == len(outbox.ContentSequence)
    (attempt,) = rig.show(spec.study_instance_uid)["reports"][0]["deliveries"][0]["attempt_log"]
    assert attempt["sop_class_uid"] == SR and attempt["outcome"] == "delivered"


def test_pacs_without_any_sr_class_fails_permanently(make_rig: Any) -> None:
    rig = make_rig(pacs_without=(SR_3D, SR))
    spec = make_study_spec(30, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.complete_and_process()
    (delivery,) = rig.studies()[spec.study_instance_uid]["deliveries"]
    assert (
        delivery["status"] == "failed"
        and "accepts none of the SOP classes" in (delivery["last_error"])
    )


def test_reprocessing_the_same_input_gives_the_same_report_identity(make_rig: Any) -> None:
    """Two nodes with the same AE title and model (or one node that lost its database)
    produce the same SR UIDs for the same input, so a PACS never shows a duplicate."""
    spec = make_study_spec(31, n_slices=SLICES)
    first, second = make_rig(name="a"), make_rig(name="b")
    received = []
    for rig in (first, second):
        rig.send(list(iter_study_datasets(spec)))
        rig.complete_and_process()
        (path,) = rig.pacs.received
        received.append(pydicom.dcmread(path))
    a, b = received
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    tracking = [(i.UID if "UID" in i else None) for i in _items(a)]
    assert tracking == [(i.UID if "UID" in i else None) for i in _items(b)]


def _items(ds: Any) -> list[Any]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_items(item))
    return out


def test_key_images_go_out_beside_the_report_when_enabled(make_rig: Any) -> None:
    rig = make_rig(extra="[report]\nkey_object_selection = true\nheatmaps = true\n")
    spec = make_study_spec(32, covid=True, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "delivered"
    kinds = [r["kind"] for r in rig.show(spec.study_instance_uid)["reports"]]
    assert kinds == ["result", "key_objects"] + ["heatmap"] * 5  # model.key_slices = 5
    by_class: dict[str, list[Any]] = {}
    for path in rig.pacs.received:
        ds = pydicom.dcmread(path)
        by_class.setdefault(ds.SOPClassUID, []).append(ds)
    (kos,) = by_class["1.2.840.10008.5.1.4.1.1.88.59"]
    heatmaps = by_class["1.2.840.10008.5.1.4.1.1.7"]
    (sr,) = by_class[SR_3D]
    keys = [
        s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for s in _items(kos)
        if s.ValueType == "IMAGE"
    ]
    assert len(keys) == 5 and len(heatmaps) == 5
    assert {h.SourceImageSequence[0].ReferencedSOPInstanceUID for h in heatmaps} == set(keys)
    assert all(h.SeriesDescription.startswith("AI heat map, not for diagnosis") for h in heatmaps)
    assert len({h.SeriesInstanceUID for h in heatmaps}) == 1
    assert sr.SeriesInstanceUID not in {kos.SeriesInstanceUID, heatmaps[0].SeriesInstanceUID}


def test_key_images_are_off_by_default(make_rig: Any) -> None:
    rig = make_rig()
    spec = make_study_spec(33, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.complete_and_process()
    assert [r["kind"] for r in rig.show(spec.study_instance_uid)["reports"]] == ["result"]
    assert len(rig.pacs.received) == 1


def test_a_warning_status_counts_as_delivered(make_rig: Any) -> None:
    rig = make_rig()
    rig.pacs.answer = 0xB000  # "coercion of data elements": stored, with a warning
    spec = make_study_spec(34, n_slices=SLICES)
    rig.send(list(iter_study_datasets(spec)))
    rig.complete_and_process()
    row = rig.studies()[spec.study_instance_uid]
    assert row["status"] == "delivered"
    assert row["deliveries"][0]["last_status"] == "0xB000" and row["deliveries"][0]["attempts"] == 1


def test_configured_strategy_lung_gate_and_card_calibration_decide(make_rig: Any) -> None:
    """[model] aggregation = max with the lung gate, calibrated by the card's calibrator for
    exactly that strategy: the result says so and its probability is the calibrated one."""
    from dataclasses import replace

    from model_zoo.card import Calibration
    from scpnode.aggregate import strategy_key

    rig = make_rig()
    ctx = rig.worker.ctx
    key = strategy_key("max", lung_gate=True)
    calibration = Calibration("platt", None, "test", {key: {"method": "platt", "a": 0.5, "b": -1}})
    card = replace(ctx.model.card, calibration=calibration)
    model = ctx.settings.model.model_copy(update={"aggregation": "max", "lung_gate": True})
    rig.worker.ctx = replace(ctx, settings=ctx.settings.model_copy(update={"model": model}),
                             model=replace(ctx.model, card=card))  # fmt: skip
    spec = make_study_spec(23, covid=True, n_slices=SLICES)
    assert rig.send(list(iter_study_datasets(spec))) == [0] * SLICES
    rig.complete_and_process()
    (result,) = rig.show(spec.study_instance_uid)["results"]
    assert "maximum slice probability" in result["aggregation"]
    assert "lung-bearing slices" in result["aggregation"]
    assert "calibrated (platt) from raw score" in result["aggregation"]
    raw = float(result["aggregation"].split("from raw score ")[1].split()[0].rstrip(";"))
    assert raw <= max(s["probability"] for s in result["slices"]) + 1e-4
    assert result["probability"] == pytest.approx(card.calibration.calibrator(key)(raw), abs=1e-3)
    assert result["threshold_source"] == "calibrated probability (0.5)"
