"""One frozen, validated settings object: TOML file + ``SCPNODE_<SECTION>__<KEY>`` overrides.

The contract (DESIGN §5): unknown keys are errors, relative paths are relative to the config
file (the working directory without one), and a bad value names its key. Sections and keys
beyond the contract are additions; a key never changes meaning once it exists.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scpnode.domain import CHEST_KEYWORDS, LUNG_KERNELS

ENV_PREFIX = "SCPNODE_"
CONFIG_ENV = "SCPNODE_CONFIG"

AeTitle = Annotated[
    str,
    Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*\S[\x20-\x5b\x5d-\x7e]*$"),
]
Port = Annotated[int, Field(ge=1, le=65535)]
EnvName = Annotated[str, Field(pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")]


class ConfigError(Exception):
    """Invalid configuration; the message names the key (exit status 2)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _empty_path_is_none(value: object) -> object:
    return None if value in ("", None) else value


class NodeTls(_Section):
    """Addition ``[node.tls]``: DICOM TLS for the SCP; when enabled it speaks only TLS."""

    enabled: bool = False
    cert: Path | None = None  # PEM certificate (chain) of the node
    key: Path | None = None  # its PEM private key
    ca: Path | None = None  # PEM CA bundle that client certificates must chain to
    require_client_cert: bool = True
    key_password_env: EnvName = ""  # environment variable holding an encrypted key's password

    @field_validator("cert", "key", "ca", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return _empty_path_is_none(value)

    @model_validator(mode="after")
    def _complete(self) -> NodeTls:
        if self.enabled and (self.cert is None or self.key is None):
            raise ValueError("cert and key are required when enabled = true")
        if self.enabled and self.require_client_cert and self.ca is None:
            raise ValueError("ca is required when require_client_cert = true")
        return self


class NodeSettings(_Section):
    ae_title: AeTitle = "SCPNODE"
    host: str = "0.0.0.0"
    port: Port = 11112
    allowed_calling_aets: tuple[AeTitle, ...] = ()
    max_associations: int = Field(default=16, ge=1, le=1000)
    accept_all_storage: bool = True
    # additions
    device_uid: str = ""  # empty: derived from the AE title (stable per node)
    max_pdu: int = Field(default=262144, ge=0)  # 0: unlimited
    # processes that accept associations on the one port (SO_REUSEPORT; Linux spreads
    # connections among them): one GIL each, for many concurrent senders
    receive_processes: int = Field(default=1, ge=1, le=32)
    network_timeout_s: float = Field(default=60.0, gt=0)
    require_called_aet: bool = False  # true: a called AE title other than ae_title: (1, 1, 7)
    calling_aet_hosts: dict[AeTitle, tuple[str, ...]] = {}  # AE title -> IP addresses/networks
    tls: NodeTls = NodeTls()

    @field_validator("calling_aet_hosts")
    @classmethod
    def _networks(cls, hosts: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        """Each entry: a non-empty list of IP addresses or CIDR networks (host bits clear)."""
        checked: dict[str, tuple[str, ...]] = {}
        for aet, values in hosts.items():
            if not values:
                raise ValueError(f"{aet}: give at least one IP address or network")
            networks = []
            for value in values:
                try:
                    networks.append(str(ipaddress.ip_network(value.strip(), strict=True)))
                except ValueError as exc:
                    raise ValueError(
                        f"{aet}: {value!r} is not an IP address or network ({exc})"
                    ) from None
            checked[aet.strip()] = tuple(networks)
        return checked

    @model_validator(mode="after")
    def _bound_titles_allowed(self) -> NodeSettings:
        allowed = {a.strip() for a in self.allowed_calling_aets}
        stray = sorted(set(self.calling_aet_hosts) - allowed) if allowed else []
        if stray:
            raise ValueError(
                f"calling_aet_hosts: {', '.join(stray)} not in allowed_calling_aets "
                "(an AE title must be allowed before it can be bound to addresses)"
            )
        return self


class StorageSettings(_Section):
    spool_dir: Path = Path("var/spool")
    min_free_mb: int = Field(default=1024, ge=0)
    fsync: bool = False
    # additions
    outbox_dir: Path | None = None  # default: <spool_dir>/../outbox
    retention_days: float = Field(default=0.0, ge=0)  # 0: keep; else purge finished studies


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/scpnode.db"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("must start with sqlite:// or postgresql")
        return value


class StudySettings(_Section):
    idle_timeout_s: float = Field(default=60.0, gt=0)
    # additions
    association_grace_s: float = Field(default=2.0, ge=0)
    min_slices: int = Field(default=10, ge=1)
    chest_keywords: tuple[str, ...] = CHEST_KEYWORDS
    lung_kernels: tuple[str, ...] = LUNG_KERNELS

    @field_validator("lung_kernels")
    @classmethod
    def _valid_patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return patterns


class ModelSettings(_Section):
    name: str = "ctnet10"
    weights: Path | None = None  # empty string in TOML: the reproducible demo weights
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$")
    allow_synthetic: bool = False
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    indeterminate: tuple[float, float] | None = None  # [low, high]: reported Undetermined
    # additions
    allow_domain_shift: bool = False  # serve a png-8bit-trained model on DICOM anyway
    aggregation: Literal["mean_top_fraction", "max", "mean", "fraction_positive"] = (
        "mean_top_fraction"
    )
    top_fraction: float = Field(default=0.10, gt=0.0, le=1.0)
    slice_threshold: float = Field(default=0.5, ge=0.0, le=1.0)  # fraction_positive
    lung_gate: bool | None = None  # None: as the model card says
    lung_min_fraction: float = Field(default=0.03, gt=0.0, lt=1.0)
    calibration: Literal["card", "none"] = "card"
    batch_size: int | str = "auto"  # 1-4096, or auto: 16 on a CPU, 64 on CUDA
    key_slices: int = Field(default=5, ge=1, le=50)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, else fp32
    decode_processes: int = Field(default=0, ge=0, le=64)  # 0: in the worker (CPU: lanes)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: object) -> object:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value == "auto" or (whole and 1 <= value <= 4096):  # type: ignore[operator]
            return value
        raise ValueError(f'must be a number from 1 to 4096, or "auto"; got {value!r}')

    @field_validator("indeterminate")
    @classmethod
    def _band(cls, band: tuple[float, float] | None) -> tuple[float, float] | None:
        if band is not None and not 0.0 <= band[0] <= band[1] <= 1.0:
            raise ValueError("must be [low, high] with 0 <= low <= high <= 1")
        return band

    @field_validator("weights", mode="before")
    @classmethod
    def _empty_is_demo(cls, value: object) -> object:
        return None if value in ("", None) else value


class ReportSettings(_Section):
    """Addition: optional objects beside the SR (off by default: they add objects to PACS)."""

    key_object_selection: bool = False
    heatmaps: bool = False


class DeliverySettings(_Section):
    max_age_h: float = Field(default=24.0, gt=0)
    # additions
    retry_initial_s: float = Field(default=5.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)  # consecutive transient failures: open
    breaker_cooldown_s: float = Field(default=60.0, gt=0)  # then one probe attempt


class Destination(_Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: AeTitle
    host: str
    port: Port
    # additions: DICOM TLS to this destination
    tls: bool = False
    ca: Path | None = None  # PEM CA bundle the PACS certificate must chain to; none: system CAs
    cert: Path | None = None  # our client certificate (optional; with key)
    key: Path | None = None
    server_hostname: str = ""  # name checked against the PACS certificate; empty: host
    key_password_env: EnvName = ""

    @field_validator("cert", "key", "ca", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return _empty_path_is_none(value)

    @model_validator(mode="after")
    def _tls_complete(self) -> Destination:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together (a client certificate needs its key)")
        extra = [k for k in ("ca", "cert", "key") if getattr(self, k) is not None]
        if not self.tls and (extra or self.server_hostname or self.key_password_env):
            raise ValueError(
                "ca, cert, key, server_hostname, key_password_env are used only with tls = true"
            )
        return self


class WorkerSettings(_Section):
    """Addition: the inference/delivery process(es) that `serve` starts beside the SCP."""

    processes: int = Field(default=1, ge=0, le=64)
    lease_s: float = Field(default=300.0, gt=0)
    poll_interval_s: float = Field(default=0.5, gt=0)
    prescore: bool = True  # score slices while their study is still arriving


class WebSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8080
    # additions
    cookie_secure: bool = True  # browsers keep Secure cookies over HTTPS (and on loopback)
    session_idle_min: float = Field(default=30.0, gt=0)  # signed out after this long idle
    session_max_h: float = Field(default=12.0, gt=0)  # and this long after signing in
    page_size: int = Field(default=50, ge=10, le=500)  # table rows per page
    tls_cert: Path | None = None  # PEM: serve HTTPS (with tls_key); none: plain HTTP
    tls_key: Path | None = None

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return _empty_path_is_none(value)

    @model_validator(mode="after")
    def _tls_pair(self) -> WebSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class Settings(_Section):
    node: NodeSettings = NodeSettings()
    storage: StorageSettings = StorageSettings()
    database: DatabaseSettings = DatabaseSettings()
    study: StudySettings = StudySettings()
    model: ModelSettings = ModelSettings()
    delivery: DeliverySettings = DeliverySettings()
    report: ReportSettings = ReportSettings()
    destinations: tuple[Destination, ...] = ()
    worker: WorkerSettings = WorkerSettings()
    web: WebSettings = WebSettings()
    # where relative paths were resolved from; not a TOML key
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _unique_destinations(self) -> Settings:
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("destinations: names must be unique")
        return self

    @property
    def outbox_dir(self) -> Path:
        return self.storage.outbox_dir or self.storage.spool_dir.parent / "outbox"


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (or ``$SCPNODE_CONFIG``, or nothing) and apply environment overrides."""
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        raw = _read_toml(path)
        base = path.resolve().parent
    _apply_env(raw, env)
    if "source" in raw:
        raise ConfigError("source: unknown key")
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return _resolve_paths(settings, base, path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """``SCPNODE_NODE__PORT=11112`` sets ``[node] port``; ``SCPNODE_DESTINATIONS`` a TOML array;
    ``SCPNODE_NODE__TLS__ENABLED=true`` sets ``[node.tls] enabled`` (a key of a sub-table).

    Other ``SCPNODE_*`` variables without a double underscore (``SCPNODE_CONFIG``,
    ``SCPNODE_CACHE_DIR``) are not configuration keys and are left alone.
    """
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        value = _parse_env_value(text)
        if len(parts) == 1 and parts[0] == "destinations":
            raw["destinations"] = value
        elif len(parts) == 1:
            continue
        elif len(parts) == 2 and all(parts):
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: [{parts[0]}] is not a section")
            section[parts[1]] = value
        elif len(parts) == 3 and all(parts):
            table = raw.setdefault(parts[0], {})
            sub = table.setdefault(parts[1], {}) if isinstance(table, dict) else None
            if not isinstance(sub, dict):
                raise ConfigError(f"{name}: [{parts[0]}.{parts[1]}] is not a section")
            sub[parts[2]] = value
        else:
            raise ConfigError(f"{name}: expected SCPNODE_<SECTION>__<KEY>")


def _parse_env_value(text: str) -> Any:
    """Numbers, booleans, arrays and inline tables in TOML syntax; anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}")
    return "invalid configuration: " + "; ".join(lines)


def _resolve_paths(settings: Settings, base: Path, source: Path | None) -> Settings:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    storage = settings.storage.model_copy(
        update={
            "spool_dir": resolve(settings.storage.spool_dir),
            "outbox_dir": resolve(settings.storage.outbox_dir)
            if settings.storage.outbox_dir
            else None,
        }
    )
    model = settings.model.model_copy(
        update={"weights": resolve(settings.model.weights) if settings.model.weights else None}
    )
    database = settings.database.model_copy(
        update={"url": _resolve_sqlite(settings.database.url, base)}
    )
    return settings.model_copy(
        update={
            "storage": storage, "model": model, "database": database, "source": source,
            **_resolve_tls_paths(settings, resolve),
        }
    )  # fmt: skip


def _resolve_tls_paths(settings: Settings, resolve: Callable[[Path], Path]) -> dict[str, Any]:
    """Certificates, keys and CA bundles of ``[node.tls]``, of each destination and ``[web]``."""

    def paths(section: NodeTls | Destination) -> dict[str, Path | None]:
        found: dict[str, Path | None] = {k: getattr(section, k) for k in ("cert", "key", "ca")}
        return {k: None if v is None else resolve(v) for k, v in found.items()}

    node = settings.node.model_copy(
        update={"tls": settings.node.tls.model_copy(update=paths(settings.node.tls))}
    )
    destinations = tuple(d.model_copy(update=paths(d)) for d in settings.destinations)
    web = settings.web.model_copy(
        update={k: None if v is None else resolve(v)
                for k, v in (("tls_cert", settings.web.tls_cert),
                             ("tls_key", settings.web.tls_key))}
    )  # fmt: skip
    return {"node": node, "destinations": destinations, "web": web}


def _resolve_sqlite(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == "sqlite:///:memory:":
        return url
    rest = url[len(prefix) :]
    if rest.startswith("/"):
        return url
    return prefix + str(base / rest)
