"""Distinguished names built and compared as structures (RFC 4514), never as strings.

Pure and dependency-free (the planner, the ingress and every target import it): ``escape_rdn_value`` is what a
Halo field becomes inside a DN template, ``parse`` splits a DN into its RDNs and *unescapes* each value, and
``canonical`` is the form two DNs are compared in. Comparing unescaped values is what makes
``OU=\\53ervice Accounts`` (``\\53`` is ``S``) equal to ``OU=Service Accounts``: a string comparison with
the escapes kept sees two different OUs, while the directory resolves both to the same object.
"""

from __future__ import annotations

import re
from functools import lru_cache

# RFC 4514 section 2.4: these are escaped anywhere in a value; a leading space or '#' and a trailing space too.
# '=' is not required by the RFC, but AD's own DN writer escapes it, and it costs nothing.
_SPECIAL = set('"+,;<>\\=')
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")


class InvalidDN(ValueError):
    """Text that is not a plain RFC 4514 distinguished name (or is an AD extended DN such as ``<SID=...>``)."""


def escape_rdn_value(value: str) -> str:
    """``value`` escaped for the value part of one RDN: it can never add or change an RDN."""
    out: list[str] = []
    for index, char in enumerate(value):
        if char in _SPECIAL:
            out.append("\\" + char)
        elif char == "\x00":
            out.append("\\00")
        elif index == 0 and char in " #":
            out.append("\\" + char)
        elif index == len(value) - 1 and char == " ":
            out.append("\\ ")
        else:
            out.append(char)
    return "".join(out)


def _unescape(value: str, dn: str) -> str:
    """A value with its RFC 4514 escapes resolved (``\\53`` -> ``S``, ``\\,`` -> ``,``) and outer spaces removed."""
    raw = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\":
            pair = value[i + 1 : i + 3]
            if _HEX_PAIR.fullmatch(pair):
                raw.append(int(pair, 16))
                i += 3
                continue
            if i + 1 >= len(value):
                raise InvalidDN(f"{dn!r}: a value ends in a lone backslash")
            raw += value[i + 1].encode("utf-8")
            i += 2
            continue
        raw += char.encode("utf-8")
        i += 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidDN(f"{dn!r}: an escaped value is not UTF-8") from None
    # Unescaped outer spaces are insignificant (RFC 4514 3); escaped ones are rare enough to fold the same way.
    return text.strip(" ")


def split_rdns(dn: str) -> list[str]:
    """The RDNs of ``dn`` as written (escapes kept), split at unescaped commas; raises ``InvalidDN``."""
    text = dn.strip()
    if not text:
        return []
    if text.startswith("<"):
        raise InvalidDN(f"{dn!r} is an extended DN (<SID=...>, <GUID=...>): only plain DNs are accepted")
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _split_unescaped(text: str, separator: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\":
            current.append(text[i : i + 2])
            i += 2
            continue
        if text[i] == separator:
            out.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    out.append("".join(current))
    return out


Canonical = tuple[tuple[tuple[str, str], ...], ...]


# The worker's protection checks compare the same few DNs (the mapping's OUs and groups, the person's DN) about 40
# times per joiner: parsed once, a comparison costs a dictionary look-up instead of ~30 µs (issue 20). The result
# is an immutable tuple; an invalid DN raises every time (exceptions are not cached). 512 entries (about 1 MB)
# hold the mapping's DNs and the people in flight: a joiner misses about once (its own new DN).
@lru_cache(maxsize=512)
def parse(dn: str) -> Canonical:
    """``dn`` as a tuple of RDNs, each a sorted tuple of (attribute type lower-cased, value unescaped and
    case-folded). Raises ``InvalidDN`` for anything that is not a plain DN."""
    rdns: list[tuple[tuple[str, str], ...]] = []
    for rdn in split_rdns(dn):
        avas: list[tuple[str, str]] = []
        for ava in _split_unescaped(rdn, "+"):
            kind, equals, value = ava.partition("=")
            kind = kind.strip()
            if not equals or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)*", kind):
                raise InvalidDN(f"{dn!r}: {rdn.strip()!r} is not an attribute=value pair")
            if value.strip().startswith("#"):
                raise InvalidDN(f"{dn!r}: BER-encoded values (#...) are not accepted")
            avas.append((kind.lower(), _unescape(value, dn).casefold()))
        rdns.append(tuple(sorted(avas)))
    return tuple(rdns)


def canonical(dn: str) -> Canonical:
    """The comparable form of ``dn`` (see ``parse``)."""
    return parse(dn)


def same(a: str, b: str) -> bool:
    """Whether two DNs name the same entry as text can tell (unescaped, case-insensitive)."""
    try:
        return parse(a) == parse(b)
    except InvalidDN:
        return False


def is_under(dn: str, container: str) -> bool:
    """True when ``dn`` is ``container`` or lies below it; False when either is not a plain DN."""
    try:
        child, parent = parse(dn), parse(container)
    except InvalidDN:
        return False
    return len(child) >= len(parent) and child[len(child) - len(parent) :] == parent


def rdn_count(dn: str) -> int:
    """How many RDNs ``dn`` has; raises ``InvalidDN``."""
    return len(parse(dn))
