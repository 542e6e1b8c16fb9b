"""`scpnode models train|evaluate` on a tiny COVID-CT-layout folder the test writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_zoo.card import load_card
from model_zoo.datasets import DatasetError, open_dataset
from scpnode.cli import main

SPLITS = {"train": 4, "val": 2, "test": 3}  # patients per class


def _image(rng: np.random.Generator, covid: bool) -> np.ndarray:
    """A grey 'chest' with dark lungs; COVID: bright ground-glass blobs in the lungs."""
    img = np.full((72, 72), 20, np.uint8)
    img[8:64, 6:66] = 140
    img[16:56, 12:33] = 40
    img[16:56, 39:60] = 40
    if covid:
        for _ in range(3):
            r, c = rng.integers(20, 50), rng.choice([rng.integers(14, 30), rng.integers(41, 57)])
            img[r - 4 : r + 4, c - 4 : c + 4] = 110
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def make_covid_ct(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for folder, split_dir, covid in (
        ("CT_COVID", "COVID", True),
        ("CT_NonCOVID", "NonCOVID", False),
    ):
        (root / "Images-processed" / folder).mkdir(parents=True)
        (root / "Data-split" / split_dir).mkdir(parents=True, exist_ok=True)
        for split, patients in SPLITS.items():
            names = []
            for p in range(patients):
                for k in range(3):
                    name = (f"2020.{split}.{p}-p{k + 1}-1%{k}.png" if covid
                            else f"{split}_{p}%{k}.png")  # fmt: skip
                    Image.fromarray(_image(rng, covid)).save(
                        root / "Images-processed" / folder / name
                    )
                    names.append(name)
            (root / "Data-split" / split_dir / f"{split}{folder}.txt").write_text("\n".join(names))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zoo")
    data = make_covid_ct(root / "COVID-CT")
    weights = root / "weights"
    rc = main(["models", "train", "--model", "ctnet10", "--data", str(data), "--out",
               str(weights / "ctnet10-t1.pt"), "--epochs", "3", "--batch-size", "8",
               "--no-progress", "--version", "t1", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    return data, weights


def test_train_writes_a_card_with_domain_threshold_and_calibration(trained) -> None:
    _, weights = trained
    card = load_card(weights / "ctnet10-t1.pt")
    assert (card.name, card.version, card.training_domain) == ("ctnet10", "t1", "png-8bit")
    assert card.calibration.method == "platt"
    assert "mean_top_fraction(top_fraction=0.1, lung_gate=off)" in card.calibration.study
    assert 0.0 <= card.threshold <= 1.0
    assert card.metrics["training"]["epochs_run"] >= 1
    assert card.intended_use == "research; not a medical device"
    assert Path(f"{weights / 'ctnet10-t1.pt'}.ckpt").is_file()  # resumable


def test_evaluate_all_writes_table_figures_and_intervals(trained, tmp_path: Path) -> None:
    data, weights = trained
    out = tmp_path / "eval"
    rc = main(["models", "evaluate", "--all", "--weights-dir", str(weights), "--data", str(data),
               "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert rc == 0
    table = (out / "results.md").read_text()
    assert "| ctnet10@t1 | slice |" in table and "| ctnet10@t1 | study* |" in table
    assert "No weights evaluated for: vgg19, vgg16, densenet169, resnet50, inception_v3" in table
    rows = list(csv.DictReader((out / "results.csv").open()))
    study = next(r for r in rows if r["level"] == "study*")
    assert int(study["n"]) == 2 * SPLITS["test"]  # patients, not images
    assert (
        float(study["accuracy_ci_low"])
        <= float(study["accuracy"])
        <= float(study["accuracy_ci_high"])
    )
    slice_row = next(r for r in rows if r["level"] == "slice")
    assert int(slice_row["n"]) == 2 * 3 * SPLITS["test"]
    for name in ("accuracy.png", "roc.png", "confusion-ctnet10-t1-study.png",
                 "confusion-ctnet10-t1-slice.png"):  # fmt: skip
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = json.loads((out / "results.json").read_text())
    assert not any(w.startswith("WARNING") for w in report["warnings"])


def test_random_split_warns_about_shared_patients(trained, tmp_path: Path, capsys) -> None:
    data, weights = trained
    rc = main(["models", "evaluate", "--weights", str(weights / "ctnet10-t1.pt"), "--data",
               str(data), "--out", str(tmp_path), "--split", "random"])  # fmt: skip
    assert rc == 0
    assert "shares" in capsys.readouterr().out
    assert "WARNING" in (tmp_path / "results.md").read_text()


def test_png_model_is_refused_on_dicom_data(trained, tmp_path: Path, capsys) -> None:
    _, weights = trained
    synth = tmp_path / "synth"
    assert main(["synth", "--out", str(synth), "--studies", "2", "--slices", "4"]) == 0
    rc = main(["models", "evaluate", "--weights", str(weights / "ctnet10-t1.pt"), "--data",
               str(synth), "--out", str(tmp_path / "e"), "--subset", "all"])  # fmt: skip
    assert rc == 1
    assert "trained on png-8bit" in capsys.readouterr().err


def test_pretrained_without_the_file_is_a_clear_offline_error(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data, _ = trained
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rc = main(["models", "train", "--model", "resnet50", "--data", str(data), "--out",
               str(tmp_path / "r.pt"), "--pretrained", "imagenet", "--epochs", "1"])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "resnet50-0676ba61.pth" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert not (tmp_path / "r.pt").exists()


def test_dataset_errors_name_the_path_and_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    broken = make_covid_ct(tmp_path / "c")
    (broken / "Data-split" / "COVID" / "valCT_COVID.txt").unlink()
    with pytest.raises(DatasetError, match=r"valCT_COVID\.txt"):
        open_dataset(broken)
    (tmp_path / "f" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="folder per class"):
        open_dataset(tmp_path / "f")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "ground_truth.csv").write_text("uid,label\n")
    with pytest.raises(DatasetError, match="study_instance_uid,label"):
        open_dataset(tmp_path / "g")


def test_unknown_model_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["models", "train", "--model", "alexnet", "--data", str(tmp_path)]) == 2


def test_models_list_json_shows_the_six_and_the_trained_weights(
    trained, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _, weights = trained
    monkeypatch.setenv("SCPNODE_CACHE_DIR", str(weights.parent))
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["ctnet10", "vgg19", "vgg16", "densenet169", "resnet50", "inception_v3"]
    assert rows["ctnet10"]["parameters"] == 6_918_625
    assert rows["vgg16"]["input_size"] == [150, 150] and rows["vgg16"]["gpu_recommended"]
    assert rows["ctnet10"]["weights"].startswith("trained t1 (png-8bit)")
    assert rows["vgg19"]["weights"].startswith("none")


def test_train_and_evaluate_on_synthetic_dicom_studies(tmp_path: Path) -> None:
    """The HU path: `scpnode synth` studies, lung-bearing slices train, the gate and the
    calibrators land in a dicom-hu card, evaluation scores studies."""
    data = tmp_path / "synth"
    assert (
        main(["synth", "--out", str(data), "--studies", "8", "--slices", "6", "--seed", "9"]) == 0
    )
    out = tmp_path / "w" / "ctnet10-hu.pt"
    assert main(["models", "train", "--model", "ctnet10", "--data", str(data), "--out", str(out),
                 "--epochs", "1", "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    card = load_card(out)
    assert card.training_domain == "dicom-hu" and card.synthetic
    assert card.aggregation.lung_gate and card.preprocessing.body_crop
    assert any("lung_gate=0.03" in k for k in card.calibration.study)
    assert main(["models", "evaluate", "--weights", str(out), "--data", str(data), "--out",
                 str(tmp_path / "e"), "--subset", "all"]) == 0  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "e" / "results.csv").open()))
    assert {r["level"] for r in rows} == {"study", "study*"}  # no slice labels in HU studies
    assert all(int(r["n"]) == 8 for r in rows)
