"""A small, sandboxed template language for attribute values and names.

``"{firstname|ascii|lower}.{surname|ascii|lower}"`` reads fields of the event and pipes them through a
fixed set of filters. There is no expression evaluation and no attribute access on Python objects: a
template can only look up a name in a flat dictionary of strings and call the filters below, so a mapping
file (or a hostile payload value) can never run code. ``{{`` and ``}}`` are literal braces.

A field that is absent (not given by Halo) raises ``MissingField``; the planner then leaves the attribute
alone, because a missing field must never clear an attribute. ``default:x`` supplies a value instead.

``map:<table>`` looks the value up (case-insensitively, trimmed) in a ``[tables.<table>]`` section of the
mapping (``map:<table>:<default>`` gives the value for a key the table lacks); the planner puts the tables in
the context under keys no template can name (``table_fields``). ``date:<format>`` reads a date (see
``parse_date``) and writes it with a ``strftime`` format, or as AD's ``accountExpires`` (``date:ad``,
``date:ad_end``). A value a filter cannot use (a key the table lacks, with no default; a date that does not
parse) is treated as an absent field: the attribute is left alone, or ``default:x`` gives ``x`` as written.

DN templates (OUs, groups, protected and managed containers) are rendered with ``render_dn``: every field is
RDN-escaped (the ``rdn`` filter, added as the last filter of every placeholder but ``{base_dn}``, which is
the service's own setting), so a Halo field holding ``,OU=Service Accounts`` or ``\\53`` stays one value of
one RDN; and the result must have exactly as many RDNs as the template.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from operator import itemgetter

from lifecycle.dn import InvalidDN, escape_rdn_value, rdn_count
from lifecycle.errors import ConfigurationError


class MissingField(LookupError):
    """The template names a field the event does not carry."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


# Letters that Unicode decomposition does not fold to ASCII.
_EXTRA_FOLDS = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "ø": "o",
        "Ø": "O",
        "đ": "d",
        "Đ": "D",
        "ł": "l",
        "Ł": "L",
        "þ": "th",
        "Þ": "TH",
        "œ": "oe",
        "Œ": "OE",
        "ı": "i",
    }
)


def fold_ascii(value: str) -> str:
    """Fold diacritics to plain ASCII letters ("Zoë Ñúñez" -> "Zoe Nunez"); drop what cannot fold."""
    if value.isascii():
        return value  # nothing to fold, and the common case: skip the decomposition
    decomposed = unicodedata.normalize("NFKD", value.translate(_EXTRA_FOLDS))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).encode("ascii", "ignore").decode()


class UnusableValue(ValueError):
    """A value a filter cannot use (a date that does not parse, a key a table lacks): the field counts as absent."""


# Halo writes an unset date as its minimum (1900-01-01T00:00:00, sometimes 0001-01-01): not a date.
_HALO_NO_DATE_BEFORE = date(1901, 1, 1)
# AD's accountExpires: 100-nanosecond intervals since 1601-01-01 UTC (Windows FILETIME; [MS-ADA1] 2.5).
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def parse_date(value: str) -> datetime:
    """A Halo date or date-time as an aware datetime (UTC when the text names no offset).

    Accepted: ISO 8601 as Halo's API writes dates, ``2026-12-31``, ``2026-12-31T17:30:00``, with fractional
    seconds, ``Z`` or ``+01:00``, and a space instead of ``T``. A locale's display form (``04/03/2026``) is
    refused: day first or month first cannot be told, and a wrong expiry date is worse than none. Halo's "no
    date" (any date before 1901, e.g. ``1900-01-01T00:00:00``) and anything else raise ``UnusableValue``.
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UnusableValue(f"{value!r} is not an ISO 8601 date") from None
    if parsed.date() < _HALO_NO_DATE_BEFORE:
        raise UnusableValue(f"{value!r} is Halo's empty date")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _date(value: str, *fmt: str) -> str:
    """``date:<strftime format>``; ``date:ad`` (the instant) and ``date:ad_end`` (the next midnight UTC after
    the date: the end of that day, as Active Directory Users and Computers sets "End of") as accountExpires."""
    when = parse_date(value)
    form = ":".join(fmt) or "%Y-%m-%d"
    if form in ("ad", "ad_end"):
        if form == "ad_end":
            when = datetime.combine(when.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)
        delta = when - _FILETIME_EPOCH
        return str((delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10)
    return when.strftime(form)


# Context keys of the mapping's lookup tables: the NUL makes them names no template field can read directly.
_TABLE_PREFIX = "\x00table:"


def table_key(table: str, key: str | None = None) -> str:
    """The context key of one table entry, or (``key`` None) of the marker saying the table is loaded."""
    return f"{_TABLE_PREFIX}{table}" if key is None else f"{_TABLE_PREFIX}{table}:{key.strip().lower()}"


def table_fields(tables: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The context entries that let ``map:<table>`` read ``tables`` (keys case-insensitive and trimmed)."""
    fields: dict[str, str] = {}
    for name, table in tables.items():
        fields[table_key(name)] = ""
        fields.update({table_key(name, key): value for key, value in table.items()})
    return fields


def _lookup(context: Mapping[str, str | None], value: str, table: str, *default: str) -> str:
    found = context.get(table_key(table, value))
    if found is not None:
        return found
    if default and context.get(table_key(table)) is not None:
        return ":".join(default)
    # A key the table lacks, or no table here (a context the planner did not build): leave the value alone.
    raise UnusableValue(f"{value!r} is not in table {table!r}")


def _first(value: str, count: str = "1") -> str:
    return value[: int(count)]


def _replace(value: str, old: str = "", new: str = "") -> str:
    return value.replace(old, new)


FILTERS: dict[str, Callable[..., str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "title": str.title,
    "trim": str.strip,
    "ascii": fold_ascii,
    "alnum": lambda v: "".join(c for c in v if c.isalnum()),
    "letters": lambda v: "".join(c for c in v if c.isalpha()),
    "digits": lambda v: "".join(c for c in v if c.isdigit()),
    "nospace": lambda v: "".join(v.split()),
    "initial": lambda v: v.strip()[:1],
    "first": _first,
    "replace": _replace,
    # RFC 4514 escaping for a value inside a DN; added by default to every field of a DN template.
    "rdn": escape_rdn_value,
    # Braces doubled: added to every field of a template that is rendered twice (home-folder paths,
    # write-back), so a Halo value such as "{mail}" stays text and never becomes a placeholder of the second.
    "braces": lambda v: v.replace("{", "{{").replace("}", "}}"),
    "date": _date,
}
# Filters that read the context besides the value (the mapping's tables): called as f(context, value, *args).
CONTEXT_FILTERS: dict[str, Callable[..., str]] = {"map": _lookup}

# Fields a DN template may use unescaped: the service's own settings, never a Halo value.
TRUSTED_DN_FIELDS = frozenset({"base_dn"})

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")


@dataclass(frozen=True)
class _Placeholder:
    field: str
    filters: tuple[tuple[str, tuple[str, ...]], ...]
    default: str | None


Part = str | _Placeholder


@dataclass(frozen=True)
class Template:
    """A compiled template."""

    source: str
    parts: tuple[Part, ...]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(p.field for p in self.parts if isinstance(p, _Placeholder))

    @property
    def tables(self) -> frozenset[str]:
        """The lookup tables the template's ``map`` filters name."""
        return frozenset(
            args[0] for p in self.parts if isinstance(p, _Placeholder) for name, args in p.filters if name == "map"
        )

    def render(self, context: Mapping[str, str | None]) -> str:
        """Render with ``context``; raises ``MissingField`` for a field that is absent or None."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = context.get(part.field)
            if value is None:
                if part.default is None:
                    raise MissingField(part.field)
                value = part.default
            try:
                for name, args in part.filters:
                    lookup = CONTEXT_FILTERS.get(name)
                    value = lookup(context, value, *args) if lookup else FILTERS[name](value, *args)
            except UnusableValue:
                if part.default is None:
                    raise MissingField(part.field) from None
                value = part.default  # as written: the filters just refused this field's value
            out.append(value)
        return "".join(out)

    def with_last_filter(self, name: str, *, trusted: frozenset[str] = frozenset()) -> Template:
        """This template with filter ``name`` last on every field not in ``trusted`` (once, never twice)."""
        parts: list[Part] = []
        for part in self.parts:
            escape = isinstance(part, _Placeholder) and part.field not in trusted
            if isinstance(part, _Placeholder) and escape and (not part.filters or part.filters[-1][0] != name):
                parts.append(_Placeholder(part.field, (*part.filters, (name, ())), part.default))
            else:
                parts.append(part)
        return Template(self.source, tuple(parts))

    def for_dn(self) -> Template:
        """This template with ``rdn`` as the last filter of every untrusted field."""
        return self.with_last_filter("rdn", trusted=TRUSTED_DN_FIELDS)

    def dn_shape(self, context: Mapping[str, str | None]) -> int:
        """How many RDNs the template has: every untrusted field stands for one plain value."""
        probe = "".join(
            p if isinstance(p, str) else (context.get(p.field) or "") if p.field in TRUSTED_DN_FIELDS else "x"
            for p in self.parts
        )
        # An empty base DN (a plan without a directory, in tests or a bare dry run) leaves a trailing comma.
        return rdn_count(probe.rstrip(", "))


class UnsafeDN(ConfigurationError):
    """A DN template whose rendering is not a plain DN of the template's shape."""


def _parse_placeholder(body: str, source: str) -> _Placeholder:
    field, *pipes = [p.strip() for p in body.split("|")]
    if not _NAME.match(field):
        raise ConfigurationError(f"template {source!r}: {field!r} is not a field name")
    filters: list[tuple[str, tuple[str, ...]]] = []
    default: str | None = None
    for pipe in pipes:
        name, *args = pipe.split(":")
        if name == "default":
            default = ":".join(args)
            continue
        if name not in FILTERS and name not in CONTEXT_FILTERS:
            known = ", ".join(sorted(["default", *FILTERS, *CONTEXT_FILTERS]))
            raise ConfigurationError(f"template {source!r}: unknown filter {name!r} (known: {known})")
        if name == "first" and (len(args) > 1 or (args and not args[0].isdigit())):
            raise ConfigurationError(f"template {source!r}: first takes one whole number, as first:3")
        if name == "map" and (not args or not _NAME.match(args[0]) or ":" in args[0]):
            raise ConfigurationError(f"template {source!r}: map takes a table name, as map:departments")
        filters.append((name, tuple(args)))
    return _Placeholder(field, tuple(filters), default)


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Template:
    """Compile ``source``; raises ``ConfigurationError`` naming the problem."""
    parts: list[Part] = []
    literal: list[str] = []
    i = 0
    while i < len(source):
        char = source[i]
        if source.startswith("{{", i) or source.startswith("}}", i):
            literal.append(char)
            i += 2
            continue
        if char == "}":
            raise ConfigurationError(f"template {source!r}: unmatched '}}' (write '}}}}' for a brace)")
        if char == "{":
            end = source.find("}", i)
            if end < 0:
                raise ConfigurationError(f"template {source!r}: unclosed '{{'")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_parse_placeholder(source[i + 1 : end], source))
            i = end + 1
            continue
        literal.append(char)
        i += 1
    if literal:
        parts.append("".join(literal))
    return Template(source, tuple(parts))


def render(source: str, context: Mapping[str, str | None]) -> str:
    """Compile (cached) and render in one call."""
    return compile_template(source).render(context)


OptionalRenderer = Callable[[Mapping[str, str | None]], str | None]
# Filters that take no argument and never raise UnusableValue (date and map can; first and replace take arguments).
_TOTAL_FILTERS = frozenset(FILTERS) - {"date", "first", "replace"}


def _one_argument(name: str, args: tuple[str, ...]) -> Callable[[str], str] | None:
    """A filter as a function of the value alone, or None where it can refuse a value or takes other arguments."""
    if not args and name in _TOTAL_FILTERS:
        return FILTERS[name]
    if name == "first":  # at most one argument, digits only (checked at compile): _first as a slice, in C
        return itemgetter(slice(None, int(args[0]) if args else 1))
    return None


def _placeholder_renderer(part: _Placeholder) -> OptionalRenderer:
    """One placeholder as a function of the context: its text, or None where ``Template.render`` raises
    ``MissingField`` (an absent field, or a value a filter refused, without a default)."""
    name, default = part.field, part.default
    if not part.filters:
        if default is None:
            return lambda context: context.get(name)
        return lambda context: value if (value := context.get(name)) is not None else default
    plain = tuple(_one_argument(f, args) for f, args in part.filters)
    if all(apply is not None for apply in plain):
        # Filters of the value alone that accept every text (lower, ascii, first:N, ...): a straight pipe.
        pipe = tuple(apply for apply in plain if apply is not None)

        def piped(context: Mapping[str, str | None]) -> str | None:
            value = context.get(name)
            if value is None:
                if default is None:
                    return None
                value = default
            for apply in pipe:
                value = apply(value)
            return value

        return piped
    # The filters resolved once: (context filter, plain filter, arguments) per pipe.
    chain = tuple((CONTEXT_FILTERS.get(f), FILTERS.get(f), args) for f, args in part.filters)

    def rendered(context: Mapping[str, str | None]) -> str | None:
        value = context.get(name)
        if value is None:
            if default is None:
                return None
            value = default
        try:
            for reads_context, plain, args in chain:
                value = reads_context(context, value, *args) if reads_context else plain(value, *args)  # type: ignore[misc]
        except UnusableValue:
            return default  # as written, or None: the filters just refused this field's value
        return value

    return rendered


def plain_field(source: str) -> str | None:
    """The field when ``source`` is exactly one placeholder without filters or default (``"{firstname}"``),
    whose rendering is the field's value as it is (None: absent); None for any other template."""
    parts = compile_template(source).parts
    if len(parts) != 1 or not isinstance(parts[0], _Placeholder):
        return None
    head = parts[0]
    return None if head.filters or head.default is not None else head.field


def field_then_text(source: str) -> tuple[str, str] | None:
    """(field, text) when ``source`` is exactly one placeholder without filters or default followed by literal
    text (``"{samaccountname}@example.test"``); None for any other template."""
    parts = compile_template(source).parts
    if len(parts) != 2 or not isinstance(parts[0], _Placeholder) or not isinstance(parts[1], str):
        return None
    head = parts[0]
    return None if head.filters or head.default is not None else (head.field, parts[1])


@lru_cache(maxsize=4096)
def optional_renderer(source: str) -> OptionalRenderer:
    """``source`` compiled to a function of the context that returns its rendering, or None where ``render``
    raises ``MissingField``: the planner's form, built once per template and called without exceptions."""
    parts = compile_template(source).parts
    if all(isinstance(p, str) for p in parts):
        text = "".join(p for p in parts if isinstance(p, str))
        return lambda context: text
    if len(parts) == 1 and isinstance(parts[0], _Placeholder):
        return _placeholder_renderer(parts[0])
    pieces = tuple(p if isinstance(p, str) else _placeholder_renderer(p) for p in parts)
    shapes = tuple(isinstance(p, str) for p in pieces)
    # The common shapes of names, addresses and descriptions, without the general loop: "{sam}@domain",
    # "{a}.{b}", "{a}{b}", "Halo user {user_id}".
    if shapes == (False, True):
        head, tail = pieces[0], pieces[1]
        assert not isinstance(head, str) and isinstance(tail, str)
        return lambda context: None if (value := head(context)) is None else value + tail
    if shapes == (True, False):
        lead, field = pieces[0], pieces[1]
        assert isinstance(lead, str) and not isinstance(field, str)
        return lambda context: None if (value := field(context)) is None else lead + value
    if shapes == (False, False):
        left_of, right_of = pieces[0], pieces[1]
        assert not isinstance(left_of, str) and not isinstance(right_of, str)

        def pair(context: Mapping[str, str | None]) -> str | None:
            left = left_of(context)
            if left is None:
                return None
            right = right_of(context)
            return None if right is None else left + right

        return pair
    if shapes == (False, True, False):
        first, middle, last = pieces
        assert not isinstance(first, str) and isinstance(middle, str) and not isinstance(last, str)

        def joined(context: Mapping[str, str | None]) -> str | None:
            left = first(context)
            if left is None:
                return None
            right = last(context)
            return None if right is None else left + middle + right

        return joined

    def rendered(context: Mapping[str, str | None]) -> str | None:
        out: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = piece(context)
            if value is None:
                return None
            out.append(value)
        return "".join(out)

    return rendered


@lru_cache(maxsize=1024)
def _first_stage_template(source: str) -> Template:
    return compile_template(source).with_last_filter("braces")


def render_first_stage(source: str, context: Mapping[str, str | None]) -> str:
    """Render the first stage of a template that is rendered twice: values come out with their braces
    doubled, so the second render (``{{samaccountname}}``, from the account) reads them as text."""
    return _first_stage_template(source).render(context)


@lru_cache(maxsize=1024)
def _dn_template(source: str) -> Template:
    return compile_template(source).for_dn()


def check_dn_template(source: str) -> None:
    """Refuse (``ConfigurationError``) a DN template that is not a plain DN whatever its fields hold."""
    try:
        compile_template(source).dn_shape({"base_dn": "DC=example,DC=test"})
    except InvalidDN as exc:
        raise ConfigurationError(f"DN template {source!r}: {exc}") from None


def render_dn(source: str, context: Mapping[str, str | None]) -> str:
    """Render a DN template with every Halo field RDN-escaped; raises ``MissingField`` or ``UnsafeDN``.

    The rendered DN must parse, must not be an extended DN (``<SID=...>``, ``<GUID=...>``) and must have as
    many RDNs as the template itself: a value can never add, remove or move an RDN.
    """
    # Pure in the fields the template reads and base_dn (the shape check reads it even when the template does
    # not): the same inputs render and check once, not once per user (group DNs repeat for everybody). A
    # template whose filters read the context besides its fields (map) is rendered each time.
    fields = _dn_inputs(source)
    if fields is None:
        return _check_dn(source, context)
    return _remembered_dn(source, fields, tuple(context.get(name) for name in fields))


@lru_cache(maxsize=1024)
def _dn_inputs(source: str) -> tuple[str, ...] | None:
    template = _dn_template(source)
    if any(name in CONTEXT_FILTERS for p in template.parts if isinstance(p, _Placeholder) for name, _ in p.filters):
        return None
    return tuple(sorted(template.fields | {"base_dn"}))


@lru_cache(maxsize=8192)
def _remembered_dn(source: str, fields: tuple[str, ...], values: tuple[str | None, ...]) -> str:
    """``render_dn`` for one set of inputs; an error is raised again each time (lru_cache keeps no exception)."""
    return _check_dn(source, dict(zip(fields, values, strict=True)))


def _check_dn(source: str, context: Mapping[str, str | None]) -> str:
    template = _dn_template(source)
    rendered = template.render(context)
    try:
        expected = template.dn_shape(context)
        actual = rdn_count(rendered.rstrip(", ") if not context.get("base_dn") else rendered)
    except InvalidDN as exc:
        raise UnsafeDN(f"DN template {source!r}: {exc}") from None
    if actual != expected:
        raise UnsafeDN(f"DN template {source!r} has {expected} RDNs but renders to {actual}: {rendered!r}")
    return rendered
