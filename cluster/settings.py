"""One conversion path from settings as people write them (YAML, `serve run app key=value`
strings, CLI flags) to the typed, frozen config dataclasses.

`from_mapping(base, data)` returns `base` with `data` applied: nested dataclass fields take a
mapping of their own (`{"engine": {"max_num_seqs": 8}}`) or dotted keys (`engine.max_num_seqs`),
and string values are converted by the field's type ("8" -> 8, "none" -> None, "true" -> True,
"0,1" -> ("0", "1")). Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_NONE_STRINGS = ("none", "null", "")
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def from_mapping(base: T, data: Mapping[str, Any], where: str = "") -> T:
    if not dataclasses.is_dataclass(base):
        raise TypeError(f"{base!r} is not a dataclass instance")
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        head, dot, rest = str(key).partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, Mapping):
            nested.setdefault(head, {}).update(value)
        else:
            flat[head] = value
    hints = typing.get_type_hints(type(base))
    fields = {f.name for f in dataclasses.fields(base) if f.init}
    unknown = sorted((set(flat) | set(nested)) - fields)
    if unknown:
        known = ", ".join(sorted(fields))
        raise ValueError(f"unknown setting {where}{unknown[0]} (known here: {known})")
    changes: dict[str, Any] = {}
    for name, value in flat.items():
        changes[name] = _convert(value, hints[name], f"{where}{name}")
    for name, sub in nested.items():
        current = changes.get(name, getattr(base, name))
        if current is None:
            current = _dataclass_of(hints[name])()
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"setting {where}{name} takes a value, not a section")
        changes[name] = from_mapping(current, sub, f"{where}{name}.")
    return dataclasses.replace(base, **changes)


def to_mapping(config: Any) -> dict[str, Any]:
    """The inverse, with tuples as lists: what `from_mapping` takes back and YAML can write."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _dataclass_of(hint: Any) -> type:
    for option in _options(hint):
        if dataclasses.is_dataclass(option):
            return option
    raise ValueError(f"{hint} is not a section")


def _options(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _convert(value: Any, hint: Any, key: str) -> Any:
    options = _options(hint)
    optional = type(None) in options
    if value is None or (
        optional and isinstance(value, str) and value.strip().lower() in _NONE_STRINGS
    ):
        if not optional:
            raise ValueError(f"setting {key} cannot be empty")
        return None
    if any(dataclasses.is_dataclass(o) for o in options):
        raise ValueError(f"setting {key} is a section: give it a mapping of its settings")
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return _convert_to(value, option)
        except (TypeError, ValueError) as e:
            errors.append(str(e))
    raise ValueError(f"setting {key}: {'; '.join(errors)}")


def _records(value: Any, item: type) -> tuple[Any, ...]:
    """A list of records (e.g. SLO classes): mappings of their fields (YAML), or the record's
    own one-line form (`item.parse`), several separated by ';' in one string."""
    if isinstance(value, str):
        value = [v for v in value.split(";") if v.strip()]
    if isinstance(value, Mapping) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{value!r} is not a list of {item.__name__} entries")
    hints = typing.get_type_hints(item)
    out = []
    for entry in value:
        if isinstance(entry, str):
            out.append(item.parse(entry))
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"{entry!r} is not a {item.__name__} mapping")
        unknown = sorted(set(entry) - set(hints))
        if unknown:
            raise ValueError(f"unknown {item.__name__} field {unknown[0]}")
        out.append(item(**{k: _convert(v, hints[k], k) for k, v in entry.items()}))
    return tuple(out)


def _convert_to(value: Any, target: Any) -> Any:
    origin = typing.get_origin(target)
    if origin is tuple:
        (item, *_) = typing.get_args(target) or (str,)
        if dataclasses.is_dataclass(item):
            return _records(value, item)
        items = [v for v in value.split(",") if v] if isinstance(value, str) else list(value)
        return tuple(_convert_to(v, item) for v in items)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise ValueError(f"{value!r} is not true or false")
    if target is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not a whole number")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a whole number") from None
    if target is float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
    if target is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{value!r} is not text")
    raise TypeError(f"settings of type {target} are not supported")
