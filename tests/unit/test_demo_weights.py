"""Demo-weight cache and evaluation helpers (the real training is not run in unit tests)."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from model_zoo.card import ModelCard, load_card, save_card, sha256_file
from scpnode import demo_training
from scpnode import demo_weights as dw


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCPNODE_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert dw.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SCPNODE_CACHE_DIR")
    assert dw.default_cache_dir() == tmp_path / "x" / "scpnode"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dw.default_cache_dir() == tmp_path / "home" / ".cache" / "scpnode"


def test_demo_weights_path(tmp_path: Path) -> None:
    assert dw.demo_weights_path(tmp_path) == tmp_path / "weights" / f"ctnet10-{dw.VERSION}.pt"
    assert dw.demo_weights_path(tmp_path, seed=3).name == f"ctnet10-{dw.VERSION}-seed3.pt"


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the real training by writing a tiny weights file and a genuine card."""
    calls: list[Path] = []

    def train(out_path: Path, *, seed: int = 0, log: object = print) -> ModelCard:
        calls.append(out_path)
        time.sleep(0.2)  # long enough for a concurrent caller to hit the lock
        out_path.write_bytes(f"weights for seed {seed}".encode())
        card = demo_training._card(seed, 0.5, 0.0, {"note": "fake"}, sha256_file(out_path))
        save_card(card, out_path)
        return card

    monkeypatch.setattr(dw, "train_demo_weights", train)
    return calls


def test_ensure_trains_once_then_uses_cache(tmp_path: Path, fake_training: list[Path]) -> None:
    path = dw.ensure_demo_weights(tmp_path, log=lambda _m: None)
    assert path == dw.demo_weights_path(tmp_path)
    card = load_card(path)
    assert card.synthetic and "SYNTHETIC DEMO WEIGHTS" in card.intended_use
    assert card.weights_sha256 == sha256_file(path)
    assert dw.ensure_demo_weights(tmp_path, log=lambda _m: None) == path
    assert len(fake_training) == 1
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [
        path.name,
        path.name + ".card.json",
    ]


def test_tampered_cache_is_retrained(tmp_path: Path, fake_training: list[Path]) -> None:
    path = dw.ensure_demo_weights(tmp_path, log=lambda _m: None)
    path.write_bytes(b"tampered")
    messages: list[str] = []
    assert dw.ensure_demo_weights(tmp_path, log=messages.append) == path
    assert len(fake_training) == 2
    assert any("retraining" in m for m in messages)
    assert sha256_file(path) == load_card(path).weights_sha256


def test_concurrent_callers_train_once(tmp_path: Path, fake_training: list[Path]) -> None:
    results: list[Path] = []

    def call() -> None:
        results.append(dw.ensure_demo_weights(tmp_path, log=lambda _m: None))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_training) == 1
    assert len(set(results)) == 1 and len(results) == 3


def test_split_is_by_study_and_stratified() -> None:
    labels = {i: i % 2 for i in range(40)}
    train, val, test = demo_training.split_studies(labels, seed=5)
    assert len(train) + len(val) + len(test) == 40
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    for part in (train, val, test):
        assert abs(sum(labels[int(s)] for s in part) * 2 - len(part)) <= 1
    again = demo_training.split_studies(labels, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))


def test_study_probability_is_mean_of_top_ten_percent() -> None:
    probs = np.array([0.1] * 18 + [0.9, 0.7] + [0.2] * 10)
    study = np.array([0] * 20 + [1] * 10)
    out = demo_training.study_probabilities(probs, study, np.array([0, 1]))
    assert np.allclose(out, [0.8, 0.2])


def test_choose_threshold_lands_in_the_gap() -> None:
    t = demo_training.choose_threshold(
        np.array([0.1, 0.2, 0.3, 0.7, 0.8]), np.array([0, 0, 0, 1, 1])
    )
    assert t == pytest.approx(0.5)
    noisy = demo_training.choose_threshold(np.array([0.1, 0.6, 0.4, 0.9]), np.array([0, 0, 1, 1]))
    assert 0.0 < noisy < 1.0
