"""Composition helpers shared by `serve`, `worker` and `demo`: build things once, pass them down."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from model_zoo.card import ModelCard, load_card, verify_weights
from scpnode import __version__, scope
from scpnode.clock import utcnow
from scpnode.config import Settings
from scpnode.db import Database
from scpnode.delivery import Deliverer, RetryPolicy
from scpnode.domain import NodeIdentity
from scpnode.uids import node_device_uid

if TYPE_CHECKING:
    from scpnode.send import Peer


class StartupError(Exception):
    """The node must not start as configured; the message says which key to change."""


def node_identity(settings: Settings) -> NodeIdentity:
    device_uid = settings.node.device_uid or node_device_uid(settings.node.ae_title)
    return NodeIdentity(
        ae_title=settings.node.ae_title, device_uid=device_uid, software_version=__version__
    )


def resolve_weights(settings: Settings, *, train: bool, log: Callable[[str], None] = print) -> Path:
    """The configured weights, or the reproducible synthetic demo weights (trained if allowed)."""
    if settings.model.weights is not None:
        if not settings.model.weights.exists():
            raise StartupError(f"model.weights: file not found: {settings.model.weights}")
        return settings.model.weights
    from scpnode import demo_weights  # torch and the synthetic trainer load only when needed

    if train:
        return demo_weights.ensure_demo_weights(log=log)
    path = demo_weights.demo_weights_path(demo_weights.default_cache_dir())
    if not path.exists():
        raise StartupError(
            "model.weights is empty and the synthetic demo weights are not built yet: "
            "run `scpnode models train --synthetic` (or `scpnode serve`, which builds them)"
        )
    return path


def check_model_policy(settings: Settings, card: ModelCard | None) -> None:
    """No synthetic finding may reach a real PACS by accident.

    `card` None means the demo weights (synthetic by definition), checked before any training.
    """
    synthetic = card is None or card.synthetic
    if synthetic and settings.destinations and not settings.model.allow_synthetic:
        raise StartupError(
            "model.allow_synthetic: the model in use has SYNTHETIC demo weights (not trained on "
            "patient data) and destinations are configured; set model.weights to real weights, "
            "or model.allow_synthetic = true for a test setup"
        )
    if (
        card is not None
        and card.training_domain == "png-8bit"
        and not settings.model.allow_domain_shift
    ):
        raise StartupError(
            f"model.allow_domain_shift: {card.name}@{card.version} was trained on png-8bit "
            "images (8-bit figure crops, HU lost) and this node analyses DICOM in HU; "
            "such a model is not a model for HU data. Use dicom-hu weights, or set "
            "model.allow_domain_shift = true to serve it anyway"
        )
    if card is not None and card.architecture != settings.model.name:
        raise StartupError(
            f"model.name: {settings.model.name!r} does not match the weights' card "
            f"({card.architecture!r})"
        )


def load_checked_card(settings: Settings, weights: Path) -> ModelCard:
    """The weights' card, after checking the weights hash to it and the policy allows it."""
    try:
        card = load_card(weights)
        verify_weights(weights, card)
    except ValueError as exc:
        raise StartupError(f"model.weights: {exc}") from None
    check_model_policy(settings, card)
    return card


def scope_rules(settings: Settings, card: ModelCard) -> scope.ScopeRules:
    return scope.ScopeRules(
        chest_keywords=tuple(k.upper() for k in settings.study.chest_keywords),
        lung_kernels=settings.study.lung_kernels,
        min_slices=settings.study.min_slices,
        thickness_range_mm=(float(card.slice_thickness_mm[0]), float(card.slice_thickness_mm[1])),
    )


def open_database(settings: Settings) -> Database:
    db = Database(settings.database.url)
    db.upgrade()
    return db


def make_deliverer(db: Database, settings: Settings) -> Deliverer:
    policy = RetryPolicy(
        initial_s=settings.delivery.retry_initial_s, max_s=settings.delivery.retry_max_s
    )
    from scpnode.breaker import CircuitBreaker
    from scpnode.owners import process_owner
    from scpnode.report import comprehensive_sr_fallback
    from scpnode.send import store_file

    timeout = settings.delivery.timeout_s
    with_tls = destination_tls(settings)
    return Deliverer(
        db,
        settings.node.ae_title,
        policy,
        utcnow,
        sender=lambda path, peer: store_file(
            path, with_tls(peer), settings.node.ae_title, timeout,
            fallback=comprehensive_sr_fallback,
        ),
        breaker=CircuitBreaker(settings.delivery.breaker_failures,
                               settings.delivery.breaker_cooldown_s),
        owner=process_owner(),
    )  # fmt: skip


def destination_tls(settings: Settings) -> Callable[[Peer], Peer]:
    """Attach the TLS settings of the configured destination that a delivery addresses.

    Delivery rows keep AE title, host and port, not TLS settings, so the current configuration
    supplies them: the destination at the same host and port (the same AE title first when
    several share an address; TLS wins a tie). Each destination's certificates are loaded once
    here, so a bad file stops start-up with its key named (ConfigError, exit 2).
    """
    from scpnode.tls import ClientTls, client_context, client_tls

    by_address: dict[tuple[str, int], list[tuple[str, ClientTls | None]]] = {}
    for dest in settings.destinations:
        tls = client_tls(dest)
        if tls is not None:
            client_context(tls)
        by_address.setdefault((dest.host, dest.port), []).append((dest.ae_title, tls))

    def attach(peer: Peer) -> Peer:
        candidates = by_address.get((peer.host, peer.port), [])
        same_aet = [tls for aet, tls in candidates if aet == peer.ae_title]
        tls = next((t for t in same_aet or [t for _, t in candidates] if t), None)
        return peer if peer.tls is not None or tls is None else replace(peer, tls=tls)

    return attach
