"""`serve` and `worker` refuse to start when the model policy or the weights say no (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_zoo.card import save_card, sha256_file
from model_zoo.ctnet10 import CTNet10
from model_zoo.train import save_weights
from scpnode.cli import main
from tests.unit.test_engine import make_card

DESTINATION = (
    '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n'
)


def config(tmp_path: Path, model: str, destinations: bool = True) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[storage]\nspool_dir = "spool"\n[database]\nurl = "sqlite:///db.sqlite"\n'
        f"[model]\n{model}\n" + (DESTINATION if destinations else "")
    )
    return path


@pytest.fixture
def synthetic_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    save_weights(CTNet10(), path)
    save_card(make_card(sha256_file(path)), path)  # card says synthetic: true
    return path


def test_serve_refuses_demo_weights_with_destinations_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCPNODE_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert main(["serve", "--config", str(config(tmp_path, 'weights = ""'))]) == 2
    err = capsys.readouterr().err
    assert "model.allow_synthetic" in err and "SYNTHETIC" in err
    assert not (tmp_path / "empty-cache").exists()  # nothing was trained


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_synthetic_card_refused_with_destinations(
    tmp_path: Path, synthetic_weights: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = config(tmp_path, f'weights = "{synthetic_weights}"')
    assert main([command, "--config", str(path)]) == 2
    assert "model.allow_synthetic" in capsys.readouterr().err


def test_tampered_weights_refused(
    tmp_path: Path, synthetic_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with synthetic_weights.open("ab") as fh:
        fh.write(b"\0")
    path = config(tmp_path, f'weights = "{synthetic_weights}"\nallow_synthetic = true')
    assert main(["worker", "--burst", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.weights" in err and "sha256" in err.lower()


def test_missing_weights_file_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, 'weights = "nope.pt"', destinations=False)
    assert main(["worker", "--burst", "--config", str(path)]) == 2
    assert "model.weights: file not found" in capsys.readouterr().err


def test_worker_burst_runs_with_allowed_synthetic_weights(
    tmp_path: Path, synthetic_weights: Path
) -> None:
    path = config(tmp_path, f'weights = "{synthetic_weights}"\nallow_synthetic = true')
    assert main(["worker", "--burst", "--config", str(path)]) == 0
