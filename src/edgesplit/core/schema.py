"""The base of every value that crosses a file or process boundary, and versioned JSON files.

Owns `FrozenModel` (pydantic, frozen, extra keys forbidden), stable JSON writing (sorted keys,
indent 2), content hashes, and reading files with `kind`/`schema_version` checks whose errors
name the bad key and suggest the nearest valid one. Imports only pydantic, stdlib, errors.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgesplit.errors import ConfigError

__all__ = [
    "FrozenModel",
    "VersionedFile",
    "content_hash",
    "format_validation_error",
    "read_json_file",
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


def format_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    """Turn a pydantic error into one readable message per problem, with key suggestions."""
    lines = [f"{source}: {error.error_count()} problem(s)"]
    for item in error.errors():
        loc = tuple(item["loc"])
        where = ".".join(str(p) for p in loc) or "<root>"
        if item["type"] == "extra_forbidden":
            key = str(loc[-1])
            valid = _valid_keys(model, loc)
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            allowed = f" (valid keys: {', '.join(sorted(valid))})" if valid else ""
            lines.append(f"  unknown key '{where}'{hint}{allowed}")
        else:
            value = item.get("input")
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"  {where}: {item['msg']} (got {shown})")
    return "\n".join(lines)


def validate_as(model: type[ModelT], data: Any, source: str) -> ModelT:
    """`model.model_validate(data)` with a ConfigError that names keys and values."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source)) from e


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
