"""A per-destination circuit breaker: stop hammering a PACS that keeps failing.

After `failures` consecutive transient failures to one destination the circuit opens: no
delivery to it is attempted for `cooldown_s` (pending deliveries wait, their retry budget
untouched). Then one probe goes out (half open); success closes the circuit, another failure
opens it again. A permanent failure means the PACS answered, so it closes the circuit too.
State lives in the delivering process; each worker protects the PACS from itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class Change(StrEnum):
    OPENED = "opened"
    CLOSED = "closed"


@dataclass
class _Circuit:
    failures: int = 0
    open_until: datetime | None = None
    probing: bool = False


@dataclass
class CircuitBreaker:
    failures: int = 5
    cooldown_s: float = 60.0
    _circuits: dict[str, _Circuit] = field(default_factory=dict)

    def blocked(self, now: datetime) -> list[str]:
        """Destinations not to try now (open, or half open with a probe already out)."""
        return [name for name, c in self._circuits.items() if not self._allows(c, now)]

    def _allows(self, circuit: _Circuit, now: datetime) -> bool:
        if circuit.open_until is None:
            return True
        return now >= circuit.open_until and not circuit.probing

    def attempting(self, destination: str, now: datetime) -> None:
        circuit = self._circuits.setdefault(destination, _Circuit())
        if circuit.open_until is not None and now >= circuit.open_until:
            circuit.probing = True

    def record(self, destination: str, transient_failure: bool, now: datetime) -> Change | None:
        """Count an outcome; returns the change of state, if any, for the audit log."""
        circuit = self._circuits.setdefault(destination, _Circuit())
        was_open = circuit.open_until is not None
        circuit.probing = False
        if not transient_failure:
            self._circuits[destination] = _Circuit()
            return Change.CLOSED if was_open else None
        circuit.failures += 1
        if circuit.failures >= self.failures:
            circuit.open_until = now + timedelta(seconds=self.cooldown_s)
            return None if was_open else Change.OPENED
        return None
