"""Where things live and which parameters apply: environment variables over params.yaml over defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(os.environ.get("INVOICE_PROJECT_ROOT", Path(__file__).resolve().parents[1]))


def params_path() -> Path:
    """`INVOICE_PARAMS`, else `params.yaml` in the working directory, else the project's own."""
    if "INVOICE_PARAMS" in os.environ:
        return Path(os.environ["INVOICE_PARAMS"])
    local = Path.cwd() / "params.yaml"
    return local if local.exists() else PROJECT_ROOT / "params.yaml"


def load_params(section: str | None = None) -> dict[str, Any]:
    """The parameters DVC tracks (params.yaml), whole or one section."""
    path = params_path()
    params = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    return params.get(section, {}) if section else params


def from_section(cls: type, section: dict[str, Any]) -> Any:
    """An instance of the dataclass `cls` from a params.yaml section: its known keys, YAML lists as tuples."""
    known = {
        k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in cls.__dataclass_fields__
    }
    return cls(**known)


def setting(env: str, section: dict[str, Any], key: str, default: Any) -> Any:
    """A value from the environment variable `env` if set, else the params.yaml section's `key`, else `default`;
    cast to the default's type."""
    value = os.environ.get(env)
    if value not in (None, ""):
        return type(default)(value)
    return type(default)(section.get(key, default))
