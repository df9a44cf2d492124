"""Constraints on the fields of config dataclasses, readable without pydantic.

Objective parameters, pretraining recipes and the trial config are plain frozen dataclasses
(the trial engine and the benchmarks run where pydantic is not installed). A field's allowed
values are declared once, in its annotation::

    lambda_: Annotated[float, Bounds(ge=0)] = 1.0
    variant: Annotated[str, Choice(("2q", "1q"))] = "2q"

:class:`Config` checks types and these constraints when a dataclass is built directly; the
spec loader (orchestrator/spec/load.py) turns the same annotations into pydantic fields, so the
YAML validation, the JSON Schema and direct construction agree.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


def yaml_key(field_name: str) -> str:
    """YAML spelling of a field: Python keywords are written ``lambda_`` in the dataclass."""
    return field_name[:-1] if field_name.endswith("_") else field_name


@dataclass(frozen=True)
class Bounds:
    """Numeric range of a field (any of ``gt``, ``ge``, ``lt``, ``le``)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def rule(self) -> str:
        """``>= 0``, ``> 0``, ``in [0, 1)``..."""
        low = (f"> {_num(self.gt)}" if self.gt is not None else
               f">= {_num(self.ge)}" if self.ge is not None else None)
        high = (f"< {_num(self.lt)}" if self.lt is not None else
                f"<= {_num(self.le)}" if self.le is not None else None)
        if low and high:
            left = "(" if self.gt is not None else "["
            right = ")" if self.lt is not None else "]"
            lo = self.gt if self.gt is not None else self.ge
            hi = self.lt if self.lt is not None else self.le
            return f"in {left}{_num(lo)}, {_num(hi)}{right}"
        return low or high or "any number"

    def admits(self, value: float) -> bool:
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))


@dataclass(frozen=True)
class Choice:
    """Allowed strings of a field; ``source`` may be a callable (a registry read late).
    ``booleans`` maps the YAML booleans a user may write (YAML reads a bare ``off`` as false)
    onto choices."""

    source: tuple[str, ...] | Callable[[], Iterable[str]]
    booleans: tuple[tuple[bool, str], ...] = ()

    @property
    def choices(self) -> tuple[str, ...]:
        return self.source if isinstance(self.source, tuple) else tuple(self.source())


def _num(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class FieldInfo:
    """A config field as both validators see it."""

    name: str
    key: str  # YAML key
    kind: type  # int, float, bool, str or tuple
    item: type | None  # element type of a tuple field
    optional: bool  # None allowed
    bounds: Bounds | None
    choice: Choice | None
    default: Any


_FIELDS: dict[type, tuple[FieldInfo, ...]] = {}


def config_fields(cls: type) -> tuple[FieldInfo, ...]:
    """The fields of a config dataclass with their kinds and constraints (read once)."""
    if cls not in _FIELDS:
        _FIELDS[cls] = _read_fields(cls)
    return _FIELDS[cls]


def _read_fields(cls: type) -> tuple[FieldInfo, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        bounds = choice = None
        if typing.get_origin(hint) is typing.Annotated:
            hint, *meta = typing.get_args(hint)
            bounds = next((m for m in meta if isinstance(m, Bounds)), None)
            choice = next((m for m in meta if isinstance(m, Choice)), None)
        optional = False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            hint = args[0] if len(args) == 1 else hint
        item = None
        if typing.get_origin(hint) is tuple:  # tuple[T, ...] -> T
            item, hint = typing.get_args(hint)[0], tuple
        elif typing.get_origin(hint) is dict:  # dict[str, T] -> T
            item, hint = typing.get_args(hint)[1], dict
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(FieldInfo(f.name, yaml_key(f.name), hint, item, optional, bounds, choice,
                             default))
    return tuple(out)


def _kind_ok(kind: type | None, value: Any) -> bool:
    if kind is None or not isinstance(kind, type):
        return True  # a nested config or a union: its own class checks it
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_config(obj: Any) -> None:
    """Type and constraint check of a config dataclass instance; ints given for floats become
    floats (1 and 1.0 hash alike) and lists given for tuples become tuples. Raises ValueError
    naming the YAML key and what is allowed."""
    for info in config_fields(type(obj)):
        value = getattr(obj, info.name)
        if value is None and info.optional:
            continue
        if info.kind is tuple and isinstance(value, list):
            value = tuple(value)
            object.__setattr__(obj, info.name, value)
        if not _kind_ok(info.kind, value):
            raise ValueError(f"{info.key} must be {info.kind.__name__}, got {value!r}")
        if info.kind is float and isinstance(value, int):
            object.__setattr__(obj, info.name, float(value))
        values = (value if info.kind is tuple else tuple(value.values()) if info.kind is dict
                  else (value,))
        for v in values:
            if info.kind in (tuple, dict) and not _kind_ok(info.item, v):
                name = getattr(info.item, "__name__", "value")
                raise ValueError(f"{info.key} must be a list of {name}, got {value!r}")
            if info.bounds is not None and not info.bounds.admits(v):
                raise ValueError(f"{info.key} must be {info.bounds.rule()}, got {v!r}")
            if info.choice is not None and v not in info.choice.choices:
                raise ValueError(f"unknown {info.key} {v!r}; allowed: "
                                 f"{', '.join(info.choice.choices)}")


@dataclass(frozen=True)
class Config:
    """Base of the config dataclasses: ``__post_init__`` runs :func:`check_config`, then
    :meth:`check` for rules that involve several fields."""

    def __post_init__(self) -> None:
        check_config(self)
        self.check()

    def check(self) -> None:
        """Cross-field rules; raise ValueError."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values (tuples as lists, nested configs as dicts)."""
        out = plain(self)
        assert isinstance(out, dict)
        return out


def plain(value: Any) -> Any:
    """A dataclass tree as plain dicts / lists / scalars."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


T = typing.TypeVar("T")


def rebuild(cls: type[T], data: Any) -> T:
    """The inverse of :func:`plain` for a dataclass tree: nested dataclasses, unions of
    dataclasses (the member whose ``Literal`` fields match), tuples and optional fields. A
    class with a ``from_plain`` classmethod rebuilds itself (e.g. a field whose type depends
    on another field's value)."""
    out = _rebuild(cls, data)
    return typing.cast(T, out)


def _rebuild(hint: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _rebuild(typing.get_args(hint)[0], data)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1:
            return _rebuild(members[0], data)
        for member in members:
            if isinstance(member, type) and dataclasses.is_dataclass(member) \
                    and _literals_match(member, data):
                return _rebuild(member, data)
        return data
    if origin is tuple:
        args = typing.get_args(hint)
        return tuple(_rebuild(args[0], v) for v in data)
    if origin is dict:
        _, value_type = typing.get_args(hint)
        return {k: _rebuild(value_type, v) for k, v in data.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        custom = getattr(hint, "from_plain", None)
        if custom is not None:
            return custom(data)
        hints = typing.get_type_hints(hint, include_extras=True)
        kwargs = {f.name: _rebuild(hints[f.name], data[f.name])
                  for f in dataclasses.fields(hint) if f.init and f.name in data}
        return hint(**kwargs)
    return data


def _literals_match(cls: type, data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    hints = typing.get_type_hints(cls, include_extras=True)
    for name, hint in hints.items():
        literal = typing.get_origin(hint) is typing.Literal
        if literal and data.get(name) not in typing.get_args(hint):
            return False
    return True
