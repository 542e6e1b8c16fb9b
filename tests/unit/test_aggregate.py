import pytest

from scpnode.aggregate import aggregate
from scpnode.domain import Finding, Label, SliceScore


def scores(probs: list[float]) -> list[SliceScore]:
    return [
        SliceScore(f"1.2.{i + 1}", "1.2.840.10008.5.1.4.1.1.2", i, float(i), p)
        for i, p in enumerate(probs)
    ]


def test_mean_of_top_ten_percent_decides() -> None:
    probs = [0.05] * 18 + [0.9, 0.7]  # 20 slices: k = 2
    result = aggregate(scores(probs), threshold=0.5)
    assert result.probability == pytest.approx(0.8)
    assert result.label == Label.COVID19 and result.finding == Finding.PRESENT
    assert "k=2 of 20" in result.aggregation and result.n_slices == 20
    assert [s.probability for s in result.key_slices[:2]] == [0.9, 0.7]


def test_one_noisy_slice_does_not_decide() -> None:
    result = aggregate(scores([0.1] * 29 + [0.99]), threshold=0.5)  # k = 3
    assert result.probability == pytest.approx((0.99 + 0.1 + 0.1) / 3)
    assert result.label == Label.NON_COVID19 and result.finding == Finding.ABSENT


def test_threshold_is_inclusive_and_methods() -> None:
    assert aggregate(scores([0.5]), threshold=0.5).label == Label.COVID19
    assert aggregate(scores([0.2, 0.8]), threshold=0.5, method="max").probability == 0.8
    assert aggregate(scores([0.2, 0.8]), threshold=0.5, method="mean").probability == 0.5


def test_indeterminate_band_and_errors() -> None:
    r = aggregate(scores([0.45]), threshold=0.5, indeterminate=(0.4, 0.6))
    assert r.finding == Finding.UNDETERMINED
    with pytest.raises(ValueError):
        aggregate([], threshold=0.5)
    with pytest.raises(ValueError):
        aggregate(scores([0.3]), threshold=0.5, method="median")


def test_key_slices_are_limited_and_ordered() -> None:
    r = aggregate(scores([0.1, 0.9, 0.5, 0.9, 0.2]), threshold=0.5, key_slices=3)
    assert [s.index for s in r.key_slices] == [1, 3, 2]


def test_undetermined_has_no_label() -> None:
    r = aggregate(scores([0.55]), threshold=0.5, indeterminate=(0.4, 0.6))
    assert r.finding == Finding.UNDETERMINED and r.label is None
    r = aggregate(scores([0.65]), threshold=0.5, indeterminate=(0.4, 0.6))
    assert r.finding == Finding.PRESENT and r.label == Label.COVID19
