"""The configuration reference, generated from the settings model (never edited by hand).

`python -m scpnode.config_doc > docs/config-reference.md` rewrites it; a test fails when the
committed page and the model disagree, so every key, type, default, limit and environment
variable listed there is the one the loader really accepts. `docs/configuration.md` explains
what the keys mean.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from scpnode.config import Destination, Settings

HEADER = """\
# Configuration reference

Generated from the settings model by `python -m scpnode.config_doc`; do not edit. What the keys
mean, with examples: [configuration.md](configuration.md). Every key can be set by an
environment variable (right column), whose value is read as TOML when it parses as TOML.
Unknown keys are errors (exit 2).
"""


def render() -> str:
    parts = [HEADER]
    for name, field in Settings.model_fields.items():
        if name == "source":
            continue
        model = _model_of(field)
        heading = f"[[{name}]]" if name == "destinations" else f"[{name}]"
        parts.append(_table(heading, name, model))
    return "\n".join(parts)


def _model_of(field: FieldInfo) -> type[BaseModel]:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return Destination  # destinations: a tuple of Destination


def _table(heading: str, path: str, model: type[BaseModel]) -> str:
    comments = _comments(model)
    doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")  # its own, not BaseModel's
    lines = [f"## {heading}", ""]
    if doc:
        lines += [doc.splitlines()[0], ""]
    lines += ["| key | type | default | limits | environment | note |", "|---|---|---|---|---|---|"]
    nested = []
    for key, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            nested.append(_table(f"[{path}.{key}]", f"{path}.{key}", sub))
            continue
        env = _env_name(path, key)
        lines.append(f"| `{key}` | {_type(field)} | {_default(field)} | {_limits(field)} | "
                     f"{env} | {comments.get(key, '')} |")  # fmt: skip
    return "\n".join([*lines, "", *nested])


def _env_name(path: str, key: str) -> str:
    if path == "destinations":
        return "`SCPNODE_DESTINATIONS` (the whole array)"
    return "`SCPNODE_" + "__".join(p.upper() for p in [*path.split("."), key]) + "`"


def _type(field: FieldInfo) -> str:
    text = _type_name(field.annotation)
    return text.replace("|", "\\|")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(f'`"{a}"`' for a in args)
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_type_name(args[0])} → {_type_name(args[1])}"
    if annotation is type(None):
        return "none"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def _limits(field: FieldInfo) -> str:
    names = {Ge: ("≥", "ge"), Gt: (">", "gt"), Le: ("≤", "le"), Lt: ("<", "lt"),
             MinLen: ("length ≥", "min_length"), MaxLen: ("length ≤", "max_length")}  # fmt: skip
    found = []
    for meta in [*field.metadata, *_annotated_metadata(field.annotation)]:
        for kind, (sign, attr) in names.items():
            if isinstance(meta, kind):
                found.append(f"{sign} {getattr(meta, attr)}")
        pattern = getattr(meta, "pattern", None)
        if isinstance(pattern, str):
            found.append(f"matches `{pattern}`".replace("|", "\\|"))
    return ", ".join(found)


def _annotated_metadata(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Annotated:
        return list(typing.get_args(annotation)[1:])
    return []


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """The `# comment` after each field in config.py: the model's own one-line notes."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    notes = {}
    for match in re.finditer(r"^\s+(\w+): [^\n#]*#\s*(.+)$", source, re.MULTILINE):
        notes[match.group(1)] = match.group(2).strip().replace("|", "\\|")
    return notes


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
