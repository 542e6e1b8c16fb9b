import pytest

from scpnode import uids


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0.1", "2.25.0"])
def test_valid_uids(uid: str) -> None:
    assert uids.is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1",
        "1.02.3",
        "1..2",
        "1.2.",
        ".1.2",
        "1.2.a",
        "../etc",
        "1.2.3/4",
        "1." + "1" * 70,
        None,
        12,
    ],
)
def test_invalid_uids(uid: object) -> None:
    assert not uids.is_valid_uid(uid)


def test_derived_uids_are_deterministic_valid_and_distinct() -> None:
    a = uids.sr_instance_uid("1.2.3", "fp", "ctnet10@v1")
    assert a == uids.sr_instance_uid("1.2.3", "fp", "ctnet10@v1")
    assert a != uids.sr_instance_uid("1.2.3", "fp2", "ctnet10@v1")
    assert a != uids.sr_instance_uid("1.2.3", "fp", "ctnet10@v2")
    for uid in (
        a,
        uids.sr_series_uid("1.2.3", "2.25.1"),
        uids.node_device_uid("SCPNODE"),
        uids.algorithm_device_uid("ctnet10", "ab" * 32),
    ):
        assert uids.is_valid_uid(uid) and uid.startswith("2.25.")
    assert uids.algorithm_device_uid("m", "a") != uids.algorithm_device_uid("m", "b")


def test_conformance_statement_names_our_implementation_class_uid() -> None:
    from pathlib import Path

    from scpnode.dicomnet import IMPLEMENTATION_CLASS_UID

    doc = (Path(__file__).parents[2] / "docs" / "conformance.md").read_text()
    assert f"`{IMPLEMENTATION_CLASS_UID}`" in doc
