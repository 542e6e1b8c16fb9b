"""Reproducible SYNTHETIC demo weights for CTnet-10, trained on phantoms, cached outside git.

The node must run end to end on a fresh machine with no patient data and nothing from the
network, so the demo model is trained here, once, from `scpnode.synth` phantoms (seeded), in a
few minutes of CPU time. The weights are honest about what they are: the card says
``synthetic: true`` and the intended use says they were not trained on patient data; serve
refuses them while real destinations are configured unless ``model.allow_synthetic``.

Evaluation is by study, never by slice alone: studies are split into train/val/test (no study
in two parts), the threshold on the aggregated study probability is chosen on the validation
studies, and the card records slice and study metrics on the held-out test studies.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from model_zoo.card import ModelCard, ModelCardError, load_card, save_card, verify_weights

Log = Callable[[str], None]

ARCHITECTURE = "ctnet10"
VERSION = "synthetic-v3"  # bump when the recipe changes: the cache file name follows it
INTENDED_USE = (
    "research; not a medical device - SYNTHETIC DEMO WEIGHTS, not trained on patient data"
)


def train_demo_weights(out_path: Path | str, *, seed: int = 0, log: Log = print) -> ModelCard:
    """Train CTnet-10 on synthetic phantoms; write weights + card at ``out_path`` (torch)."""
    from scpnode.demo_training import train_demo_weights as train

    return train(out_path, seed=seed, log=log)


# --- cache -------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$SCPNODE_CACHE_DIR``, else ``$XDG_CACHE_HOME/scpnode``, else ``~/.cache/scpnode``."""
    if os.environ.get("SCPNODE_CACHE_DIR"):
        return Path(os.environ["SCPNODE_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "scpnode"
    return Path.home() / ".cache" / "scpnode"


def demo_weights_path(cache_dir: Path | str | None = None, seed: int = 0) -> Path:
    """Where the demo weights for ``seed`` live (their card beside them)."""
    suffix = "" if seed == 0 else f"-seed{seed}"
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "weights" / f"{ARCHITECTURE}-{VERSION}{suffix}.pt"


def _cached(path: Path, seed: int, log: Log) -> bool:
    """True when ``path`` holds finished demo weights for ``seed`` matching their card."""
    if not path.is_file():
        return False
    try:
        card = load_card(path)
        verify_weights(path, card)
    except ModelCardError as exc:
        log(f"cached demo weights unusable, retraining: {exc}")
        return False
    return card.synthetic and card.training_data.seed == seed and card.version == VERSION


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock held across processes (released by the OS if we die)."""
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo_weights(
    cache_dir: Path | str | None = None, *, seed: int = 0, log: Log = print
) -> Path:
    """The cached demo weights (hash-checked), training them first if needed.

    One process trains while others wait on the lock; files are written under temporary names
    and renamed, so a reader never sees half a file or weights without their card.
    """
    path = demo_weights_path(cache_dir, seed)
    if _cached(path, seed, log):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.with_name(path.name + ".lock")):
        if _cached(path, seed, lambda _msg: None):
            return path  # another process trained them while we waited
        log(f"training synthetic demo weights into {path} (once; a few minutes on CPU)")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            card = train_demo_weights(tmp, seed=seed, log=log)
            save_card(card, path)  # card first: weights without a card are never visible
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".card.json").unlink(missing_ok=True)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scpnode.demo_weights``: make sure the demo weights exist; print the path."""
    parser = argparse.ArgumentParser(prog="python -m scpnode.demo_weights", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = ensure_demo_weights(
        args.cache_dir, seed=args.seed, log=lambda m: print(m, file=sys.stderr)
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
