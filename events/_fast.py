"""Building the ``__dict__``-backed frozen dataclasses without their ``__init__``.

The codec and the reducer create several objects per event; a generated frozen ``__init__`` pays
one ``object.__setattr__`` per field. These helpers install a ready ``dict`` as the instance's
``__dict__`` in one call. Callers must pass exactly the class's fields (they are trusted, internal).
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["build", "evolve"]

T = TypeVar("T")

_new = object.__new__
_set = object.__setattr__


def build(cls: type[T], fields: dict[str, Any]) -> T:
    """A ``cls`` whose fields are ``fields`` (taken over, not copied)."""
    obj = _new(cls)
    _set(obj, "__dict__", fields)
    return obj


def evolve(obj: T, changes: dict[str, Any]) -> T:
    """A copy of ``obj`` with ``changes`` applied (``dataclasses.replace`` without ``__init__``)."""
    fields = obj.__dict__.copy()
    fields.update(changes)
    new = _new(type(obj))
    _set(new, "__dict__", fields)
    return new
