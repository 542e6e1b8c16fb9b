"""Which model is in service, and are its weights the ones its card describes?

The console answers this for `/readyz`, the dashboard and the Models page without importing
torch: the card is JSON and the check is a SHA-256 of the weights file, cached until the
file's size or modification time changes (hashing on every probe would read the weights
every few seconds).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model_zoo.card import ModelCard, ModelCardError, load_card, sha256_file
from scpnode.config import Settings


@dataclass(frozen=True)
class ModelCheck:
    path: Path
    ok: bool
    problem: str | None = None
    card: ModelCard | None = None
    card_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{self.card.name}@{self.card.version}" if self.card else "-"


def weights_in_service(settings: Settings) -> Path:
    """The configured weights, or where the synthetic demo weights are cached."""
    if settings.model.weights is not None:
        return settings.model.weights
    from scpnode.demo_weights import demo_weights_path

    return demo_weights_path()


class ModelStatus:
    def __init__(self, settings: Settings) -> None:
        self.path = weights_in_service(settings)
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int], ModelCheck] | None = None

    def check(self) -> ModelCheck:
        try:
            stat = self.path.stat()
        except OSError:
            return ModelCheck(self.path, False, f"weights file not found: {self.path}")
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, self._check())
            return self._cache[1]

    def _check(self) -> ModelCheck:
        try:
            card = load_card(self.path)
        except ModelCardError as exc:
            return ModelCheck(self.path, False, str(exc))
        fields = asdict(card)
        actual = sha256_file(self.path)
        if actual != card.weights_sha256:
            problem = f"weights sha256 {actual} differs from the card's {card.weights_sha256}"
            return ModelCheck(self.path, False, problem, card, fields)
        return ModelCheck(self.path, True, None, card, fields)
