"""Typed configuration trees shared by every command: defaults < TOML file < ``<PREFIX>SECTION__KEY``
environment variables < explicit overrides, validated once at start so a typo fails loudly before any
socket is opened or any record is read.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one value against a dataclass field type (strings come from the environment)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if hint is bool:
        if isinstance(value, str):
            if value.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ConfigError(f"{where}: expected a boolean")
            return value.lower() in {"1", "true", "yes"}
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected a boolean")
        return value
    if hint in (int, float):
        try:
            converted = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}") from None
        if isinstance(value, bool) or (hint is int and isinstance(value, float) and value != converted):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return converted
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    return value


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown setting {where}{key!r}")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key}: expected a table")
            kwargs[name] = _build(hint, value, f"{where}{key}.")
        elif typing.get_origin(hint) is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
                raise ConfigError(f"{where}{key}: expected an array of tables ([[{where}{key}]])")
            item = typing.get_args(hint)[0]
            kwargs[name] = tuple(_build(item, v, f"{where}{key}[{i}].") for i, v in enumerate(value))
        elif typing.get_origin(hint) is Mapping or hint is Mapping:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key}: expected a table")
            kwargs[name] = types.MappingProxyType(dict(value))
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a typed config's own checks (``__post_init__``)
        raise ConfigError(f"{where.rstrip('.') or 'configuration'}: {exc}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """``SHOAL_COLLECT__BATCH__MAX_ROWS=1000`` -> ``{"batch": {"max_rows": "1000"}}``."""
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(prefix):
            continue
        path = [p.lower() for p in name[len(prefix) :].split("__") if p]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def load_tree(
    cls: type[T],
    path: str | Path | None,
    prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """A typed configuration tree ``cls``: defaults < TOML file < ``<prefix>SECTION__KEY`` env <
    explicit overrides. Unknown keys and wrong types raise :class:`ConfigError`."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc}") from None
    data = _merge(data, env_overrides(os.environ if environ is None else environ, prefix))
    data = _merge(data, overrides or {})
    return _build(cls, data, "")
