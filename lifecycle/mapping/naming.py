"""Naming rules for Active Directory: legal sAMAccountName, UPN local parts, candidate lists with suffixes."""

from __future__ import annotations

from lifecycle.mapping.templates import fold_ascii

SAM_MAX_LENGTH = 20
# Stands for the chosen sAMAccountName in UPN and mail patterns, filled in by the worker for suffixed names.
SAM_PLACEHOLDER = "{{samaccountname}}"
# Characters Active Directory refuses in sAMAccountName, plus ones we never want in a login name.
_SAM_ILLEGAL = set('"/\\[]:;|=,+*?<>@') | {"'", "`", "(", ")", "#", "%", "&", "!", "$", "^", "{", "}", "~"}
_LOCAL_PART_ILLEGAL = _SAM_ILLEGAL - {"'"}
# fold_ascii returns ASCII only, and in ASCII every whitespace or unprintable character is below "!" or DEL:
# one translate drops exactly what the per-character tests would (on bytes: ASCII is one byte a character,
# and bytes.translate deletes from a table where str.translate looks each character up in a dictionary).
_ASCII_UNWANTED = {chr(i) for i in range(33)} | {chr(127)}
_SAM_DROP = "".join(sorted(_SAM_ILLEGAL | _ASCII_UNWANTED)).encode("ascii")
_LOCAL_PART_DROP = "".join(sorted(_LOCAL_PART_ILLEGAL | _ASCII_UNWANTED)).encode("ascii")


def sanitize_sam(value: str, max_length: int = SAM_MAX_LENGTH) -> str:
    """A legal sAMAccountName from any text: ASCII-folded, no spaces or illegal characters, ≤ 20 chars.

    Leading and trailing dots are removed (AD refuses a name that ends with a dot).
    """
    folded = value if value.isascii() else fold_ascii(value)  # fold_ascii's own first test, without the call
    cleaned = folded.encode("ascii").translate(None, _SAM_DROP).decode("ascii")
    cleaned = cleaned.strip(".")
    while ".." in cleaned:
        cleaned = cleaned.replace("..", ".")
    return cleaned[:max_length].rstrip(".")


def sanitize_address(value: str) -> str:
    """A legal UPN or mail address: ASCII-folded local part, no spaces or illegal characters."""
    local, sep, domain = value.rpartition("@")
    if not sep:
        local, domain = value, ""
    cleaned = fold_ascii(local).encode("ascii").translate(None, _LOCAL_PART_DROP).decode("ascii")
    cleaned = cleaned.strip(".")
    while ".." in cleaned:
        cleaned = cleaned.replace("..", ".")
    return f"{cleaned}@{domain}" if sep else cleaned


def with_suffix(sam: str, suffix: int, max_length: int = SAM_MAX_LENGTH) -> str:
    """``sam`` with a numeric suffix, truncating the name (never the suffix) to stay within the limit."""
    text = str(suffix)
    return sam[: max_length - len(text)].rstrip(".") + text
