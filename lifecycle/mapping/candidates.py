"""A person's naming candidates (the ``names`` of ``create_user`` and ``create_cloud_user``), from the
mapping's ``[naming]`` compiled once per mapping.

Every candidate (sAMAccountName, UPN, mail) is listed in the order of the name templates, with the patterns
of a suffixed name; the worker takes the first one free in the directory. Apart from the planner because it
changes with the naming rules (``lifecycle/mapping/naming.py``), not with the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Mapping as MappingABC
from typing import Any

from lifecycle.mapping.compiled import Memo, fields_read
from lifecycle.mapping.naming import SAM_PLACEHOLDER, sanitize_address, sanitize_sam
from lifecycle.mapping.schema import Naming
from lifecycle.mapping.templates import field_then_text, optional_renderer


class CandidateNames:
    """The mapping's ``[naming]`` as the planner uses it: ``self(context)`` is one person's ``names``."""

    def __init__(self, naming: Naming) -> None:
        self.sam = tuple(optional_renderer(source) for source in naming.samaccountname)
        upns = [_address(source) for source in naming.userprincipalname]
        mails = [_address(source) for source in naming.mail]
        # Indexed by how many candidates came before: there are never more candidates than name templates.
        self.upn_at = tuple(upns[min(n, len(upns) - 1)] for n in range(len(self.sam)))
        self.mail_at = tuple(mails[min(n, len(mails) - 1)] for n in range(len(self.sam))) if mails else ()
        self.max_suffix = naming.max_suffix
        pattern_sources = [naming.userprincipalname[0], *naming.mail[:1]]
        upn_pattern = optional_renderer(naming.userprincipalname[0])
        mail_pattern = optional_renderer(naming.mail[0]) if naming.mail else None

        def patterns(context: MappingABC[str, str | None]) -> dict[str, str]:
            """The UPN and mail patterns of a suffixed name (the worker fills in the chosen sAMAccountName)."""
            names = {**context, "samaccountname": SAM_PLACEHOLDER}
            found = {"userprincipalname": upn_pattern(names) or ""}
            if mail_pattern is not None:
                found["mail"] = mail_pattern(names) or ""
            return found

        self.patterns = Memo(fields_read([], pattern_sources) - {"samaccountname"}, patterns)

    def __call__(self, context: MappingABC[str, str | None]) -> dict[str, Any]:
        """The candidates in template order (an empty or repeated name, or one without a UPN, left out), the
        patterns of a suffixed name, and the largest suffix the worker may try."""
        candidates: list[dict[str, str]] = []
        taken: set[str] = set()  # the candidates' names, lower case
        # The n-th candidate's UPN and mail patterns (the last pattern serves every further candidate).
        upn_at, mail_at = self.upn_at, self.mail_at
        for render_sam in self.sam:
            rendered = render_sam(context)
            sam = sanitize_sam(rendered) if rendered else ""
            folded = sam.lower()
            if not sam or folded in taken:
                continue
            count = len(candidates)
            upn = upn_at[count](context, sam)
            if upn is None:
                continue
            candidate = {"samaccountname": sam, "userprincipalname": upn}
            if mail_at:
                mail = mail_at[count](context, sam)
                if mail is not None:
                    candidate["mail"] = mail
            candidates.append(candidate)
            taken.add(folded)
        patterns = dict(self.patterns(context)) if candidates else {}
        return {"candidates": candidates, "suffix_patterns": patterns, "max_suffix": self.max_suffix}


AddressRenderer = Callable[[MappingABC[str, str | None], str], str | None]


def _address(source: str) -> AddressRenderer:
    """A UPN or mail template as a function of (context, candidate name): the sanitised address, or None when
    it renders absent or empty (the candidate, or its mail, is then left out)."""
    shape = field_then_text(source)
    if shape is not None and shape[0] == "samaccountname" and shape[1].startswith("@") and shape[1].count("@") == 1:
        # "{samaccountname}@domain": sanitize_sam leaves only characters sanitize_address keeps in a local part
        # (ASCII, none it drops, no dot at either end, no "..") and the domain is kept as written, so the
        # sanitised address is the name and the text (tests/unit/test_templates_and_naming.py checks it).
        text = shape[1]
        return lambda context, sam: sam + text
    render_one = optional_renderer(source)

    def address(context: MappingABC[str, str | None], sam: str) -> str | None:
        rendered = render_one(_WithName(context, sam))
        return sanitize_address(rendered) if rendered else None

    return address


class _WithName(MappingABC[str, str | None]):
    """The template context with ``samaccountname`` set, without copying the context (templates only ``get``)."""

    __slots__ = ("_context", "_sam")

    def __init__(self, context: MappingABC[str, str | None], sam: str) -> None:
        self._context = context
        self._sam = sam

    def get(self, key: str, default: Any = None) -> Any:
        return self._sam if key == "samaccountname" else self._context.get(key, default)

    def __getitem__(self, key: str) -> str | None:
        return self._sam if key == "samaccountname" else self._context[key]

    def __iter__(self) -> Iterator[str]:
        yield "samaccountname"
        yield from (key for key in self._context if key != "samaccountname")

    def __len__(self) -> int:
        return len(self._context) + ("samaccountname" not in self._context)
