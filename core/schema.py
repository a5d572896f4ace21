"""The base of every params schema, and what turns params.yaml into one validated object.

Each package owns the pydantic schema of its own knobs (``dataset.params``, ``training.params``,
``explain.sigma.SigmaParams``, each method's ``Params``, ...); ``stages.params`` composes them into the
schema of ``params.yaml``. Every schema is a ``Section``: ``extra="forbid"`` makes a misspelt key an error,
not a silently ignored value, and ``validate`` turns the first validation error into one line that names
the key, what was wrong and, for choices, the valid values.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import KdlensError

M = TypeVar("M", bound=BaseModel)
# Every seed: numpy's legacy generators take [0, 2**32) and faiss a C int, so the common range is 31 bits.
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _first_error(e: ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (misspelt? the valid keys are in params.yaml and docs/)"
    elif err["type"] == "missing":
        msg = "missing"
    elif "input" in err and err["type"] not in ("value_error",):
        msg = f"{msg} (got {err['input']!r})"
    return loc, msg


def validate(schema: type[M], raw: Any, source: str = "params.yaml", prefix: str = "") -> M:
    """``schema`` validated from ``raw``; the first error becomes one line ``source: prefix.key: what``."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        loc, msg = _first_error(e)
        raise KdlensError(f"{source}: {prefix}{loc}: {msg}") from None


def read_yaml(path: str | Path) -> dict:
    """The mapping in a params file, or one line that says why it is not one."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise KdlensError(f"{path}: not found; run from the project root (where dvc.yaml is)") from None
    except yaml.YAMLError as e:
        raise KdlensError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise KdlensError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return raw


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text (MLflow params are strings)."""
    if isinstance(d, BaseModel):
        d = d.model_dump()
    if not isinstance(d, dict):
        return {prefix: json.dumps(d) if isinstance(d, (list, tuple)) else d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def params_hash(section: Any) -> str:
    """A short stable hash of a params slice: tags MLflow runs and keys resumable checkpoints."""
    blob = json.dumps(flatten(section), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
