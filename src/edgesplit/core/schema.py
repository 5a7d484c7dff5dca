"""The base of every value that crosses a file or process boundary, and versioned JSON files.

Owns `FrozenModel` (pydantic, frozen, extra keys forbidden), stable JSON writing (sorted keys,
indent 2), content hashes, and reading files with `kind`/`schema_version` checks whose errors
name the bad key and suggest the nearest valid one. Imports only pydantic, stdlib, errors.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from edgesplit.errors import ConfigError

__all__ = [
    "FrozenModel",
    "VersionedFile",
    "content_hash",
    "describe_value",
    "format_problems",
    "format_validation_error",
    "read_json_file",
    "validate_as",
    "write_json_file",
]

ModelT = TypeVar("ModelT", bound=BaseModel)


class FrozenModel(BaseModel):
    """Immutable pydantic model; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class VersionedFile(FrozenModel):
    """A top-level file: carries `kind` and `schema_version` (checked on load)."""

    KIND: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: str
    schema_version: int


def _valid_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the (possibly nested) model at `loc`, best effort, for suggestions."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _first_model_in(annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _first_model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model_in(arg)
        if found is not None:
            return found
    return None


Loc = tuple[int | str, ...]
# How a file kind names a table or entry in its messages (`device 'pi0' (2nd [[devices]])`);
# the default is the dotted path (`stages.1`), "" for the top level.
WhereFn = Callable[[Loc], str]
# A message in the file's own syntax for an error it knows better (e.g. a TOML table shape).
SpecialFn = Callable[[ErrorDetails], str | None]


def format_validation_error(
    error: ValidationError,
    model: type[BaseModel],
    source: str,
    *,
    where: WhereFn | None = None,
    special: SpecialFn | None = None,
) -> str:
    """One readable line per problem: the table or entry it is in, unknown keys with the
    nearest valid one, a missing key that a misspelt one explains dropped, a list's "too short"
    dropped while its entries have their own errors, validators' sentences without pydantic's
    prefixes, and a got-value only for a scalar the user typed (never a dump of a table)."""
    items = error.errors()
    explained: set[tuple[Loc, str]] = set()  # (table, key) an unknown key's suggestion explains
    for item in items:
        if item["type"] == "extra_forbidden":
            loc = tuple(item["loc"])
            close = difflib.get_close_matches(str(loc[-1]), _valid_keys(model, loc), n=1)
            if close:
                explained.add((loc[:-1], close[0]))
    locs = [tuple(item["loc"]) for item in items]
    lines: list[str] = []
    for item in items:
        loc = tuple(item["loc"])
        if item["type"] == "missing" and loc and (loc[:-1], str(loc[-1])) in explained:
            continue
        if item["type"] == "too_short" and any(o[: len(loc)] == loc != o for o in locs):
            continue
        text = special(item) if special is not None else None
        lines.extend([text] if text else _problem(item, model, where or _dotted))
    return format_problems(source, lines)


def format_problems(source: str, lines: Sequence[str]) -> str:
    """`source: N problems` and one indented line per problem."""
    count = f"{len(lines)} problem{'s' if len(lines) != 1 else ''}"
    return "\n".join([f"{source}: {count}", *(f"  {line}" for line in lines)])


def describe_value(name: str, item: Mapping[str, Any]) -> str:
    """One value's problem as a sentence about `name`: "port should be less than or equal to
    65535 (got 70000)"; pydantic's prefixes dropped, the value shown when it is a scalar the
    user typed (never a dump of a table)."""
    message = str(item.get("msg", "is invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    text = f"{name} {message[6:]}" if message.startswith("Input ") else f"{name}: {message}"
    value = item.get("input")
    if not isinstance(value, dict | list | tuple):
        shown = repr(value)
        text += f" (got {shown[:57] + '...' if len(shown) > 60 else shown})"
    return text


def _problem(item: ErrorDetails, model: type[BaseModel], where: WhereFn) -> list[str]:
    loc = tuple(item["loc"])
    message = item["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    # (the table or entry the error is in, the key within it: "" for a whole entry or file)
    table, key = (loc, "") if not loc or isinstance(loc[-1], int) else (loc[:-1], str(loc[-1]))
    place = where(table)
    lead = f"{place}: " if place else ""
    if item["type"] == "extra_forbidden":
        valid = sorted(_valid_keys(model, loc))
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (valid keys: {', '.join(valid)})"
        return [f"{lead}unknown key '{key}'{hint}"]
    if item["type"] == "missing":
        return [f"{lead}missing key '{key}'"]
    if not key:  # a validator of a whole entry or file: its own sentence(s)
        return [f"{lead}{line}" for line in message.split("\n")]
    return [f"{lead}{describe_value(key, item)}"]


def _dotted(table: Loc) -> str:
    """`units[0]`, `predicted.stages[2]`: the JSON path of a table."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in table).lstrip(".")


def validate_as(
    model: type[ModelT],
    data: Any,
    source: str,
    *,
    where: WhereFn | None = None,
    special: SpecialFn | None = None,
) -> ModelT:
    """`model.model_validate(data)` with a ConfigError that names keys and values."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        message = format_validation_error(e, model, source, where=where, special=special)
        raise ConfigError(message) from e


def stable_json(data: Any) -> str:
    """JSON with sorted keys and indent 2, so diffs of generated files mean something."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def content_hash(model: BaseModel) -> str:
    """Short sha256 of a model's canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def write_json_file(model: BaseModel, path: Path) -> Path:
    """Write a model as stable JSON; creates parent folders. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name, e.g. {path / 'plan.json'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(stable_json(model.model_dump(mode="json")))
        tmp.replace(path)  # atomic: a crash never leaves half a file
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave the half-written .tmp behind
        raise
    return path


def read_json_file(model: type[ModelT], path: Path) -> ModelT:
    """Read a versioned JSON file, checking `kind` and `schema_version` before the fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}; check the path (cwd is {Path.cwd()})")
    kind = getattr(model, "KIND", "")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        expected = f"; expected a JSON file of kind {kind}" if kind else ""
        raise ConfigError(
            f"{path}: not valid JSON at line {e.lineno} col {e.colno}: {e.msg}{expected}"
        ) from e
    if kind and isinstance(data, dict):
        if data.get("kind") != kind:
            raise ConfigError(
                f"{path}: expected kind '{kind}' but the file says kind={data.get('kind')!r}; "
                "is this the right file?"
            )
        version = data.get("schema_version")
        current = getattr(model, "SCHEMA_VERSION", 1)
        if version != current:
            raise ConfigError(
                f"{path}: schema_version {version!r} is not supported (this edgesplit reads "
                f"version {current}); regenerate the file with this version"
            )
    return validate_as(model, data, str(path))
