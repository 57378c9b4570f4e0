"""The template language is sandboxed and the naming rules make legal, distinct AD names."""

from __future__ import annotations

import pytest

from lifecycle.errors import ConfigurationError
from lifecycle.mapping.naming import sanitize_address, sanitize_sam, with_suffix
from lifecycle.mapping.templates import MissingField, compile_template, fold_ascii, render


def test_diacritics_fold_to_plain_ascii_login_names() -> None:
    context = {"firstname": "Zoë", "surname": "Ñúñez"}
    assert sanitize_sam(render("{firstname|ascii|lower}.{surname|ascii|lower}", context)) == "zoe.nunez"
    assert fold_ascii("Łukasz Øster Straße") == "Lukasz Oster Strasse"


def test_a_missing_field_is_reported_not_rendered_empty() -> None:
    with pytest.raises(MissingField) as caught:
        render("{department}", {"name": "x"})
    assert caught.value.field == "department"
    assert render("{department|default:Unassigned}", {}) == "Unassigned"


def test_templates_cannot_reach_python_objects() -> None:
    # Dunder names are only keys of a flat dictionary: absent, so missing; never attribute access.
    with pytest.raises(MissingField):
        render("{__class__}", {"name": "x"})
    with pytest.raises(ConfigurationError, match="not a field name"):
        compile_template("{name.__class__()}")
    with pytest.raises(ConfigurationError, match="unknown filter"):
        compile_template("{name|eval}")


def test_payload_values_are_never_interpreted_as_templates() -> None:
    assert render("{name}", {"name": "{surname}"}) == "{surname}"


def test_braces_can_be_written_literally_and_bad_braces_are_reported() -> None:
    assert render("{{x}} {a}", {"a": "1"}) == "{x} 1"
    with pytest.raises(ConfigurationError, match="unclosed"):
        compile_template("{name")
    with pytest.raises(ConfigurationError, match="unmatched"):
        compile_template("name}")


def test_filters_transform_values() -> None:
    context = {"firstname": "  Ada ", "phone": "+44 (0) 20-7946"}
    assert render("{firstname|trim|upper}", context) == "ADA"
    assert render("{firstname|trim|initial}", context) == "A"
    assert render("{firstname|trim|first:2}", context) == "Ad"
    assert render("{phone|digits}", context) == "440207946"
    assert render("{phone|replace:-:.}", context) == "+44 (0) 20.7946"


def test_sam_names_drop_ldap_metacharacters_apostrophes_and_spaces() -> None:
    assert sanitize_sam("*)(cn=* o'brien") == "cnobrien"
    assert sanitize_sam("a..b.") == "a.b"
    assert sanitize_sam("") == ""


def test_sam_names_are_at_most_twenty_characters_and_suffixes_survive_truncation() -> None:
    long_name = "maximiliana.vandenberghe-oppenheimer"
    assert len(sanitize_sam(long_name)) == 20
    suffixed = with_suffix(sanitize_sam(long_name), 12)
    assert len(suffixed) == 20 and suffixed.endswith("12")


def test_addresses_keep_their_domain_and_fold_the_local_part() -> None:
    assert sanitize_address("zoë.núñez@corp.example.test") == "zoe.nunez@corp.example.test"
    assert sanitize_address("a b*c@x.test") == "abc@x.test"


def test_the_planners_compiled_renderer_agrees_with_render_on_every_outcome() -> None:
    # The planner renders through optional_renderer (None where render raises MissingField); a difference
    # would change what is written or cleared.
    from lifecycle.mapping.templates import optional_renderer, plain_field, table_fields

    sources = [
        "plain text",
        "{firstname}",
        "{firstname}@corp.example.test",
        "{firstname|ascii|lower}.{surname|ascii|lower}",
        "{firstname|ascii|lower|first:1}{surname|ascii|lower}",
        "Dear {firstname|default:colleague}, {{literal}} {surname}!",
        "{department|map:dept}",
        "{department|map:dept:Other}",
        "{start|date:ad_end}",
        "{start|date:%d.%m.%Y|default:never}",
        "{title|default:}",
        "{a}{b}{c}",
        "{a}{b}",
        "{a|default:x}{b|upper}",
        "Halo user {user_id}",
        "{a}",
        "{firstname|first}",
        "{firstname|ascii|first:3|upper}",
        "{firstname|first:0}",
    ]
    tables = table_fields({"dept": {"Sales": "Sales Team"}})
    contexts: list[dict[str, str | None]] = [
        {},
        {"firstname": "Zoë", "surname": "Ñúñez", "department": "sales ", "start": "2026-12-31", **tables},
        {"firstname": "", "surname": None, "department": "HR", "start": "04/03/2026", "title": "", **tables},
        {"firstname": "Ann", "surname": "Lee", "department": "Sales", "start": "1900-01-01T00:00:00"},
        {"a": "1", "b": "", "c": "3", "title": None, "user_id": "26"},
        {"b": "b", "user_id": ""},
    ]
    for source in sources:
        for context in contexts:
            try:
                expected: str | None = render(source, context)
            except MissingField:
                expected = None
            assert optional_renderer(source)(context) == expected, (source, context)
            # An attribute that is one field as it is ("{firstname}") is read without its renderer.
            field = plain_field(source)
            if field is not None:
                assert context.get(field) == expected, (source, context)
    assert [plain_field(s) for s in ("{firstname}", "{a}{b}", "{a|lower}", "{a|default:}", "x{a}")] == [
        "firstname",
        None,
        None,
        None,
        None,
    ]


def test_a_sanitised_account_name_is_already_a_sanitised_address_local_part() -> None:
    # The planner writes "{samaccountname}@domain" without sanitising the address again; that is only the same
    # when sanitize_address leaves every name sanitize_sam gives unchanged.
    import random

    rng = random.Random(20)
    alphabet = [chr(i) for i in range(0, 128)] + list("ßæøđłþœıÆØÐŁÞŒéèñüÅåçÇ .-_'`") + ["\u0301", "\u200b", "\xa0"]
    samples = ["a..b", ".a.", "a. .b", "Zoë Ñúñez", "O'Brien-Smith", "x" * 30 + ".y", "a" * 19 + ".b"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(20_000)]
    for text in samples:
        sam = sanitize_sam(text)
        if sam:
            assert sanitize_address(f"{sam}@corp.example.test") == f"{sam}@corp.example.test", repr(text)


def test_names_and_addresses_drop_exactly_the_characters_the_rules_name() -> None:
    # The sanitisers delete on the folded text's ASCII bytes in one translate; the rule is per character:
    # after folding, whitespace, control characters, DEL and the illegal characters go, nothing else.
    import random

    from lifecycle.mapping.naming import _LOCAL_PART_ILLEGAL, _SAM_ILLEGAL

    def kept(text: str, illegal: set[str]) -> str:
        return "".join(c for c in fold_ascii(text) if c not in illegal and " " < c != "\x7f")

    def tidy(text: str) -> str:
        text = text.strip(".")
        while ".." in text:
            text = text.replace("..", ".")
        return text

    rng = random.Random(26)
    alphabet = [chr(i) for i in range(0, 256)] + list("ßæøđłþœıŁŒ日本") + ["\u0301", "\u200b", "\u2028"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert sanitize_sam(text) == tidy(kept(text, _SAM_ILLEGAL))[:20].rstrip("."), repr(text)
        local, at, domain = text.rpartition("@")
        expected = f"{tidy(kept(local, _LOCAL_PART_ILLEGAL))}@{domain}" if at else tidy(kept(text, _LOCAL_PART_ILLEGAL))
        assert sanitize_address(text) == expected, repr(text)
