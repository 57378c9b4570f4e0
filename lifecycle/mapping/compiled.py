"""What the planner builds once per mapping and reuses for every event: memos of its pure parts.

Routing, the mapped OU, the groups and the naming patterns depend on a few fields of the event (a site, a
department, the base DN), not on the person: a ``Memo`` remembers each by the values of exactly the fields it
reads, so a thousand joiners of one site render and check their OU and group DNs once. Per person, only the
names and attribute values are rendered, with templates compiled to plain functions (``optional_renderer``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Mapping as MappingABC
from typing import Generic, TypeVar

from lifecycle.mapping.schema import Condition
from lifecycle.mapping.templates import compile_template

T = TypeVar("T")
Context = MappingABC[str, str | None]


class Memo(Generic[T]):
    """``fn(context)``, remembered by the values of ``fields`` in the context.

    ``fn`` must be pure and read no field of the context but ``fields`` (and entries that are the same for
    every call, such as the mapping's lookup tables). An exception is raised again each time, never cached.
    The cache is cleared when it reaches ``size`` entries, so a field that varies per person costs memory
    only up to that bound.
    """

    def __init__(self, fields: Iterable[str], fn: Callable[[Context], T], size: int = 4096) -> None:
        self._fields = tuple(sorted(set(fields)))
        self._fn = fn
        self._size = size
        self._cache: dict[tuple[str | None, ...], T] = {}

    def __call__(self, context: Context) -> T:
        key = tuple(map(context.get, self._fields))
        try:
            return self._cache[key]
        except KeyError:
            pass
        value = self._fn(context)
        if len(self._cache) >= self._size:
            self._cache.clear()
        self._cache[key] = value
        return value


def fields_read(conditions: Iterable[Condition], templates: Iterable[str], *, dn: bool = False) -> set[str]:
    """Every context field the conditions and templates read (with ``dn``, also ``base_dn``, which the DN
    shape check reads whether the template names it or not)."""
    names = {name for condition in conditions for name in condition}
    names.update(field for source in templates for field in compile_template(source).fields)
    if dn:
        names.add("base_dn")
    return names
