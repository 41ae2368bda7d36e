"""Bounds on settings fields, declared once and checked on both ways in.

A settings dataclass of a layer (``engine.settings.SchedulerSettings``, ``cce.client.HttpSettings``) declares
each bound with `annotated-types <https://github.com/annotated-types/annotated-types>`_ metadata, e.g.
``rate: Annotated[float, Gt(0)]``, and is decorated with pydantic's ``with_config(ConfigDict(extra="forbid",
allow_inf_nan=False))``. Two readers use that one declaration:

* pydantic, when ``monitor.config`` validates the config file: the dataclass *is* the section's schema, so a
  bad ``polling.rate`` gets pydantic's message (``polling.rate: Input should be greater than 0``);
* :func:`check_bounds`, from the dataclass's ``__post_init__``, when code or a test builds the settings
  directly: the same bound, as a :class:`~monitor.core.errors.ConfigError` naming ``section.field``.

Numbers must be finite, as in the config file (``allow_inf_nan=False``): an infinite timeout would overflow
and a NaN one disable the timeout.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, cast

from annotated_types import Ge, Gt, Le, Lt

from monitor.core.errors import ConfigError

__all__ = ["check_bounds"]

_Bound = Gt | Ge | Lt | Le


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    bounds: tuple[_Bound, ...]
    whole: bool  # declared ``int``: 1.5 is refused, as pydantic refuses it


_FOUND: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
    """The bounded fields of a settings dataclass, read once from its annotations."""
    if (known := _FOUND.get(cls)) is not None:
        return known
    hints = typing.get_type_hints(cls, include_extras=True)
    found = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        # ``Annotated[int, Ge(1)] | None``: the bounds are on a member of the union.
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        for member in typing.get_args(hint) if union else (hint,):
            bounds = tuple(m for m in getattr(member, "__metadata__", ()) if isinstance(m, _Bound))
            if bounds:
                found.append(_Field(f.name, bounds, whole=member.__origin__ is int))
    _FOUND[cls] = tuple(found)
    return _FOUND[cls]


def _fails(value: float, bound: _Bound) -> str | None:
    """How ``value`` breaks ``bound``, or ``None`` when it keeps it (NaN breaks every bound)."""
    if isinstance(bound, Gt):
        limit = cast(float, bound.gt)
        return None if value > limit else f"must be > {limit}"
    if isinstance(bound, Ge):
        limit = cast(float, bound.ge)
        return None if value >= limit else f"must be >= {limit}"
    if isinstance(bound, Lt):
        limit = cast(float, bound.lt)
        return None if value < limit else f"must be < {limit}"
    limit = cast(float, bound.le)
    return None if value <= limit else f"must be <= {limit}"


def check_bounds(settings: Any, section: str) -> None:
    """Raise :class:`ConfigError` (``section.field = value must be ...``) for the first field out of its bounds.

    ``None`` (an optional field left unset) keeps every bound.
    """
    for f in _fields(type(settings)):
        value = getattr(settings, f.name)
        if value is None:
            continue
        problem = _problem(value, f)
        if problem is not None:
            raise ConfigError(f"{section}.{f.name} = {value!r} {problem}")


def _problem(value: object, field: _Field) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not math.isfinite(value):
        return "must be a finite number"
    if field.whole and not float(value).is_integer():
        return "must be a whole number"
    return next((rule for bound in field.bounds if (rule := _fails(value, bound)) is not None), None)
