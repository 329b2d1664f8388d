"""TOML files into validated dataclasses.

Every config in tjepa is a dataclass; this module turns a TOML table into one and refuses
anything it does not understand, naming the key and the file. Modules own their own config
classes (``MaskingConfig`` in masking.py, ``ModelConfig`` in model.py, ...) and validate
their values in ``__post_init__``; this file only knows about types.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the configs/ the repo ships


class ConfigError(ValueError):
    """A config a user wrote is wrong; the message names the key and the file."""


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def from_dict(cls: type[T], table: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``table``; errors start with ``where`` (a file, a section)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{_at(where)}expected a table, got {_tname(table)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_at(where)}unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})"
        )
    values = {}
    for name, value in table.items():
        values[name] = _convert(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{_at(where)}{e}") from None
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{_at(where)}{e}") from None


def to_dict(obj: Any) -> Any:
    """The inverse of ``from_dict``: plain dicts and lists ready for TOML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def dump_toml(table: dict[str, Any]) -> str:
    """Write a nested dict of sections (tables, arrays of tables, scalars, lists) as TOML."""
    lines: list[str] = []
    _dump_table(table, [], lines)
    return "\n".join(lines).strip() + "\n"


def check(condition: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise a ConfigError that from_dict will prefix."""
    if not condition:
        raise ConfigError(message)


# --- helpers -------------------------------------------------------------------------------


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:
            try:
                return _convert(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_tname(value)}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_tname(value)} {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_tname(value)} {value!r}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise ConfigError(
                f"{where}: expected {hint.__name__}, got {_tname(value)} {value!r}"
            )
        return value
    if hint is Any:
        return value
    raise TypeError(f"unsupported config type {hint} at {where}")  # a bug, not a user error


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _tname(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _dump_table(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_list(v)}
    for key, value in scalars.items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in table.items():
        if _is_table(value):
            lines.append("")
            lines.append(f"[{'.'.join([*path, key])}]")
            _dump_table(value, [*path, key], lines)
        elif _is_table_list(value):
            for item in value:
                lines.append("")
                lines.append(f"[[{'.'.join([*path, key])}]]")
                _dump_table(item, [*path, key], lines)


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
