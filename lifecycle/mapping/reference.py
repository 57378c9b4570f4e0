"""Writes ``docs/mapping.md`` and ``docs/mapping.schema.json`` from the mapping schema and the action registry.

The pydantic models of ``lifecycle.mapping.schema`` (their docstrings and the comments above their fields), the
template filters and the actions' params models are the single source, and every example is checked here
(templates rendered, conditions matched, step entries validated), so the reference cannot drift from the code:
``tests/unit/test_mapping_reference.py`` fails when the committed files differ from what this renders. Run
``python -m lifecycle.mapping.reference`` after changing the schema, a filter or an action.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
import textwrap
import tomllib
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from lifecycle.actions import ActionInfo, registry
from lifecycle.mapping import schema
from lifecycle.mapping.planner import matches
from lifecycle.mapping.templates import CONTEXT_FILTERS, FILTERS, render, table_fields

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "mapping.md"
JSON_SCHEMA = ROOT / "docs" / "mapping.schema.json"
EXAMPLE_MAPPINGS = (
    ROOT / "mapping.example.toml",
    ROOT / "mapping.cloud-only.example.toml",
    *sorted((ROOT / "tests" / "events").glob("mapping-*.toml")),
)

# One example per top-level section (each is parsed as TOML when the reference is rendered).
SECTION_EXAMPLES: dict[str, str] = {
    "version": "version = 1",
    "anchor": 'anchor = "employeeID"',
    "anchor_prefix": 'anchor_prefix = "halo:"',
    "routing": '[routing]\ndefault = "default"\n\n[[routing.rules]]\nwhen = { client_name = "Contoso" }\nconnection = "contoso"',  # noqa: E501
    "naming": (
        '[naming]\nsamaccountname = ["{firstname|ascii|lower}.{surname|ascii|lower}", '
        '"{firstname|ascii|lower|initial}{surname|ascii|lower}"]\n'
        'userprincipalname = "{samaccountname}@{var.upn_suffix}"\nmail = "{samaccountname}@example.com"\ncn = "{name}"'
    ),
    "attributes": (
        '[attributes]\ngivenName = "{firstname}"\ndepartment = "{department|map:departments:Other}"\n'
        'accountExpires = "{cf.end_date|date:ad_end|default:0}"'
    ),
    "clear_when_empty": 'clear_when_empty = ["mobile", "title"]',
    "templates": '[templates.leaver]\ndescription = "Left via Halo (user {user_id})"',
    "tables": '[tables.departments]\n"Human Resources" = "HR"\nSales = "Sales and Marketing"',
    "connections": '[connections.contoso.vars]\nupn_suffix = "contoso.com"\n\n[connections.default.vars]\nupn_suffix = "corp.example.com"',  # noqa: E501
    "ou": (
        '[ou]\ndefault = "OU=Staff,{base_dn}"\ndisabled = "OU=Disabled,{base_dn}"\n\n[[ou.rules]]\n'
        'when = { site_name = { prefix = "Lon" } }\nou = "OU={department|map:departments},OU=London,{base_dn}"'
    ),
    "groups": '[[groups.rules]]\nwhen = { department = ["Sales", "Marketing"] }\ngroups = ["CN=Sales,OU=Groups,{base_dn}"]',  # noqa: E501
    "manager": '[manager]\nmanager_id = "{cf.manager_id}"\nmanager_mail = "{manager_email}"',
    "safety": '[safety]\nprotected_groups = ["CN=Tier0,OU=Groups,{base_dn}"]\nmanaged_containers = ["OU=Halo,{base_dn}"]',  # noqa: E501
    "scope": '[scope]\nagents = false\nwhen = { "cf.employee_type" = { not = ["Contractor", "Guest"] } }',
    "password": "[password]\nlength = 20\nmust_change_at_next_logon = true",
    "lifecycles": (
        '[lifecycles]\njoiner = ["create_user", "sync_groups"]\nmover = ["modify_properties", "move_ou", "sync_groups"]\n'  # noqa: E501
        'leaver = ["disable_user", { action = "move_ou", to = "disabled" }]\nrehire = ["enable_user", "reset_password"]'
    ),
    "requests": (
        '[requests]\ntime_zone = "Europe/London"\n\n[[requests.types]]\nname = "new-starter"\nkind = "joiner"\n'
        'when = { tickettype_name = "New Starter" }\nperson = { firstname = "{cf.first_name}" }\nstart_date = "{cf.start_date}"'  # noqa: E501
    ),
}

# Filter -> (template, fields): the reference shows what the template renders to, computed here.
_TABLES = table_fields({"departments": {"Sales": "Sales and Marketing"}})
FILTER_EXAMPLES: dict[str, tuple[str, dict[str, str]]] = {
    "default": ("{cf.country|default:GB}", {}),
    "lower": ("{surname|lower}", {"surname": "Ñúñez"}),
    "upper": ("{surname|upper}", {"surname": "Lee"}),
    "title": ("{surname|title}", {"surname": "o'neil"}),
    "trim": ("[{name|trim}]", {"name": "  Ann Lee "}),
    "ascii": ("{surname|ascii}", {"surname": "Ñúñez-Søren"}),
    "alnum": ("{surname|alnum}", {"surname": "O'Neil-Smith"}),
    "letters": ("{phonenumber|letters}", {"phonenumber": "ext. 12"}),
    "digits": ("{phonenumber|digits}", {"phonenumber": "+44 (20) 7946 0000"}),
    "nospace": ("{name|nospace}", {"name": "Ann Lee"}),
    "initial": ("{firstname|initial}", {"firstname": " ann"}),
    "first": ("{surname|first:3}", {"surname": "Balaji"}),
    "replace": ("{name|replace: :.}", {"name": "Ann Lee"}),
    "rdn": ("{department|rdn}", {"department": "Sales, EMEA"}),
    "braces": ("{name|braces}", {"name": "{mail}"}),
    "date": ("{cf.end_date|date:%d %b %Y}", {"cf.end_date": "2026-12-31T00:00:00Z"}),
    "map": ("{department|map:departments:Other}", {"department": "sales", **_TABLES}),
}
FILTER_DOCS: dict[str, str] = {
    "default": "the value when the field is absent (then piped through the filters); for a value a filter "
    "cannot use (a date that does not parse, a key a table lacks), the result as written",
    "lower": "lower case",
    "upper": "upper case",
    "title": "each word capitalised",
    "trim": "spaces removed at both ends",
    "ascii": "diacritics folded to ASCII (ß to ss, ø to o); what cannot fold is dropped",
    "alnum": "letters and digits only",
    "letters": "letters only",
    "digits": "digits only",
    "nospace": "every space removed",
    "initial": "the first letter",
    "first": "the first N characters (`first:3`)",
    "replace": "`replace:old:new` replaces every `old` by `new`",
    "rdn": "RFC 4514 escaping for a DN value (added last to every field of a DN template)",
    "braces": "braces doubled (added to templates that are rendered twice, such as home-folder paths)",
    "date": "`date:<strftime format>` (default `%Y-%m-%d`); `date:ad` is the instant as AD's `accountExpires` "
    "(100-nanosecond intervals since 1601-01-01 UTC); `date:ad_end` is the end of that day (the next midnight "
    'UTC), as Active Directory Users and Computers sets "End of". Reads `2026-12-31`, `2026-12-31T17:30:00`, '
    "with fractional seconds, `Z` or an offset such as `+01:00` (no offset: UTC), a space for `T` (ISO 8601, as "
    "Halo's API writes dates; a display form such as `04/03/2026` is refused: day or month first cannot be told). "
    "Halo's empty date (any date before 1901, such as `1900-01-01T00:00:00`) and "
    "anything else count as absent: the attribute is left alone, or `default:` gives the value (`default:0`: "
    "never expires)",
    "map": "`map:<table>` looks the value up in `[tables.<table>]` (trimmed, case-insensitive); `map:<table>:<default>` "  # noqa: E501
    "gives `<default>` for a key the table lacks; without a default such a value counts as absent. The table must "
    "exist (checked at load). Not in ticket request templates (rendered from the ticket, without the tables)",
}

# Condition forms: (TOML, field value, what it shows).
CONDITION_EXAMPLES: list[tuple[str, str, str]] = [
    ('when = { department = "Sales" }', "sales", "equals the value (trimmed, case-insensitive)"),
    ('when = { department = ["Sales", "Marketing"] }', "Marketing", "equals one of the values"),
    ('when = { department = { not = ["Sales", "Marketing"] } }', "Finance", "equals none of the values"),
    ('when = { site_name = { prefix = "Lon" } }', "London Bridge", "starts with the value (or one of a list)"),
    ('when = { site_name = { prefix = ["Lon", "Man"] } }', "Birmingham", "starts with none of them: no match"),
    ('when = { "var.tier" = "gold" }', "gold", "a connection variable (after routing; step conditions only)"),
]

# The AD actions' step keys (besides action and when), and one example each.
AD_STEP_KEYS: dict[str, tuple[str, ...]] = {
    "apply_template": ("template",),
    "move_ou": ("to",),
    "add_to_groups": ("groups",),
    "remove_from_groups": ("groups",),
    "sync_groups": (),
    "delete_user": ("after_days",),
    "reset_password": ("must_change",),
}
# Step entries for actions that no example mapping shows (the others are taken from the example mappings,
# commented entries included).
STEP_EXAMPLES: dict[str, str] = {
    "create_user": '"create_user"',
    "set_manager": '"set_manager"',
    "modify_properties": '"modify_properties"',
    "disable_user": '"disable_user"',
    "enable_user": '"enable_user"',
    "sync_groups": '"sync_groups"',
    "reset_password": '{ action = "reset_password", must_change = true }',
    "add_to_groups": '{ action = "add_to_groups", when = { title = { prefix = "Manager" } }, groups = ["CN=Managers,OU=Groups,{base_dn}"] }',  # noqa: E501
    "create_home_folder": r"""{ action = "create_home_folder", path = '\\files\home$\{{samaccountname}}', grant = "modify" }""",  # noqa: E501
    "move_home_folder": r"""{ action = "move_home_folder", destination = '\\files2\home$\{{samaccountname}}' }""",
    "archive_home_folder": (
        r"""{ action = "archive_home_folder", destination = '\\files\archive$\{{samaccountname}}', after_days = 30 }"""
    ),
    "delete_home_folder": '{ action = "delete_home_folder", after_days = 90 }',
    "set_home_directory": (
        r"""{ action = "set_home_directory", path = '\\files\home$\{{samaccountname}}', drive = "H:" }"""
    ),
    "run_script": '{ action = "run_script", script = "notify-payroll", args = { department = "{department}" } }',
    "halo_writeback": '{ action = "halo_writeback", customfields = [{ name = "CFADAccount", value = "samaccountname" }] }',  # noqa: E501
    "disable_remote_mailbox": '{ action = "disable_remote_mailbox", keep_addresses = true }',
    "delete_remote_mailbox": '{ action = "delete_remote_mailbox" }',
    "disable_mailbox": '{ action = "disable_mailbox" }',
    "delete_mailbox": '{ action = "delete_mailbox", remove = "licence" }',
}


# Comments and types -------------------------------------------------------------------------------------------


def _comment_text(lines: list[str]) -> str:
    return " ".join(line.strip().removeprefix("#").strip() for line in lines).strip()


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's documentation: its ``description``, else the comment lines above it (own class first)."""
    found: dict[str, str] = {}
    for cls in model.__mro__:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        node = ast.parse(source).body[0]
        assert isinstance(node, ast.ClassDef)
        previous_end = node.body[0].lineno - 1 if node.body else 0
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                above: list[str] = []
                for line in reversed(lines[previous_end : item.lineno - 1]):
                    if not line.strip().startswith("#"):
                        break
                    above.insert(0, line)
                inline = lines[item.lineno - 1].partition("  # ")[2] if item.end_lineno == item.lineno else ""
                found.setdefault(item.target.id, _comment_text([*above, inline]))
            previous_end = item.end_lineno or item.lineno
    for name, info in model.model_fields.items():
        if info.description:
            found[name] = info.description
    return found


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation == schema.Condition:
        return "condition (see Conditions)"
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return " or ".join(f"`{json.dumps(a)}`" for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"table of {type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"`{annotation.__name__}`"
    return {str: "text", int: "whole number", float: "number", bool: "true or false"}.get(annotation, "any")


def _default(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return "" if value is None else f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _field_table(model: type[BaseModel], *, skip: frozenset[str] = frozenset()) -> list[str]:
    comments = field_comments(model)
    rows = ["| Key | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        key = info.alias or name
        rows.append(
            f"| `{key}` | {_cell(type_name(info.annotation))} | {_cell(_default(model, name))} "
            f"| {_cell(comments.get(name, ''))} |"
        )
    return rows


def _doc(model: type[BaseModel]) -> str:
    return " ".join(inspect.cleandoc(model.__doc__ or "").split())


# Examples ---------------------------------------------------------------------------------------------------


def _step_entries() -> dict[str, str]:
    """One step entry (TOML inline) per action: from the example mappings (commented entries too), else ours."""
    found: dict[str, str] = {}
    for path in EXAMPLE_MAPPINGS:
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = line.strip().removeprefix("#").strip().rstrip(",")
            if not entry.startswith("{ action = "):
                continue
            try:
                action = tomllib.loads(f"x = {entry}")["x"]["action"]
            except tomllib.TOMLDecodeError:
                continue
            found.setdefault(action, entry)
    for action, entry in STEP_EXAMPLES.items():
        found.setdefault(action, entry)
    return found


def step_examples() -> dict[str, Any]:
    """Each action's example step entry, parsed (a string or a table), validated as a mapping would."""
    entries = _step_entries()
    missing = sorted(set(registry()) - set(entries))
    if missing:
        raise RuntimeError(f"no example step for {missing}: add them to STEP_EXAMPLES")
    parsed = {action: tomllib.loads(f"x = {entries[action]}")["x"] for action in sorted(registry())}
    for value in parsed.values():
        schema.StepSpec.model_validate({"action": value} if isinstance(value, str) else value)
    return {action: (entries[action], value) for action, value in parsed.items()}


# The document --------------------------------------------------------------------------------------------


def _section(name: str, info: Any) -> list[str]:
    example = SECTION_EXAMPLES[name]
    tomllib.loads(example)
    comments = field_comments(schema.Mapping)
    lines = [f"### `{name}`", ""]
    annotation = info.annotation
    models = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
    meaning = comments.get(name, "")
    if get_origin(annotation) is dict and models:
        meaning = f"A table of `{models[0].__name__}` by name. {meaning}"
    elif not models:
        meaning = f"{type_name(annotation)}; default {_default(schema.Mapping, name) or 'none'}. {meaning}"
    if meaning.strip():
        lines += [meaning.strip(), ""]
    lines += ["```toml", example, "```", ""]
    return lines + _model_tables(models)


def _model_tables(models: list[type[BaseModel]]) -> list[str]:
    """A table of each model's keys, then of the models its fields hold (conditions are documented apart)."""
    lines: list[str] = []
    seen: set[type[BaseModel]] = set()
    queue = list(models)
    while queue:
        model = queue.pop(0)
        if model in seen or model is schema.StepSpec:
            continue
        seen.add(model)
        doc = _doc(model)
        lines += [f"`{model.__name__}`" + (f": {doc}" if doc else ""), "", *_field_table(model), ""]
        for sub in model.model_fields.values():
            if sub.annotation == schema.Condition:
                continue
            args = (sub.annotation, *get_args(sub.annotation))
            args += tuple(b for a in args for b in get_args(a))
            queue += [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return lines


def _filters() -> list[str]:
    names = ["default", *sorted([*FILTERS, *CONTEXT_FILTERS])]
    undocumented = sorted(set(names) - set(FILTER_EXAMPLES) | set(names) - set(FILTER_DOCS))
    if undocumented:
        raise RuntimeError(f"filters without an example or a description: {undocumented}")
    rows = ["| Filter | What it does | Example | Gives |", "| --- | --- | --- | --- |"]
    for name in names:
        template, fields = FILTER_EXAMPLES[name]
        shown = {k: v for k, v in fields.items() if not k.startswith("\x00")}
        given = ", ".join(f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in shown.items()) or "field absent"
        rendered = render(template, fields)
        rows.append(
            f"| `{name}` | {_cell(FILTER_DOCS[name])} | `{_cell(template)}` with {_cell(given)} | `{_cell(rendered)}` |"
        )
    return rows


def _conditions() -> list[str]:
    rows = ["| Form | Field value | Matches | Meaning |", "| --- | --- | --- | --- |"]
    for toml, value, meaning in CONDITION_EXAMPLES:
        condition = schema.StepSpec.model_validate({"action": "sync_groups", **tomllib.loads(toml)}).when
        field = next(iter(condition))
        verdict = "yes" if matches(condition, {field: value}) else "no"
        rows.append(f"| `{_cell(toml)}` | `{value}` | {verdict} | {meaning} |")
    return rows


def _lifecycle_of(action: str) -> str:
    """The step list an example entry is shown in (any list may name any action)."""
    if any(word in action for word in ("delete", "remove", "disable", "archive", "revoke", "auto_reply")):
        return "leaver"
    return "mover" if action.startswith(("move", "sync")) else "joiner"


def _actions() -> list[str]:
    examples = step_examples()
    step_comments = field_comments(schema.StepSpec)
    lines: list[str] = []
    by_system: dict[str, list[ActionInfo]] = {}
    for info in registry().values():
        by_system.setdefault(info.system, []).append(info)
    titles = {"ad": "Active Directory", "graph": "Microsoft 365 (Graph)", "files": "Home folders", "script": "Scripts",
              "halo": "Halo"}  # fmt: skip
    for system, infos in by_system.items():
        lines += [f"### {titles[system]} (`{system}`)", ""]
        for info in sorted(infos, key=lambda i: i.name):
            once = " Runs at most once per work item." if info.once_only else ""
            lines += [f"#### `{info.name}`", "", f"{info.description[:1].upper()}{info.description[1:]}.{once}", ""]
            lines += ["```toml", f"{_lifecycle_of(info.name)} = [{examples[info.name][0]}]", "```", ""]
            if info.params is not None and info.params.model_fields:
                lines += _model_tables([info.params])
            elif AD_STEP_KEYS.get(info.name):
                rows = ["| Key | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
                for key in AD_STEP_KEYS[info.name]:
                    field = schema.StepSpec.model_fields[key]
                    rows.append(
                        f"| `{key}` | {_cell(type_name(field.annotation))} | {_cell(_default(schema.StepSpec, key))} "
                        f"| {_cell(step_comments.get(key, ''))} |"
                    )
                lines += [*rows, ""]
    return lines


INTRO = """\
# The mapping file: reference

Generated from the schema (`lifecycle/mapping/schema.py`), the template filters and the action registry by
`python -m lifecycle.mapping.reference`; do not edit by hand. The file is TOML, read and validated when the
service starts (`lifecycle check-config` checks it without starting anything): a typo is reported with the file
and the field, never half-way through a person's joiner. `mapping.example.toml` is a complete, commented example.

## Editor completion and validation

`docs/mapping.schema.json` is a JSON Schema of the file (generated with this page). With VS Code's
*Even Better TOML* extension (Taplo), either put this line at the top of the mapping file:

```toml
#:schema ./docs/mapping.schema.json
```

(the path is relative to the mapping file), or associate the schema with your mapping files in VS Code's
`settings.json` (the key is a regular expression over the file's URI):

```json
"evenBetterToml.schema.associations": {
  ".*/mapping[^/]*\\\\.toml$": "file:///path/to/halo-lifecycle/docs/mapping.schema.json"
}
```

The schema checks names, types and each step's parameters as you type; what needs more than one place of the
file (a `map` naming a table that exists, a `var.` field a connection defines, a template that compiles) is
checked by the service at load.

## Templates

A template is text with `{field}` placeholders: `"{firstname|ascii|lower}.{surname|ascii|lower}"`. A field is
a Halo user field (`firstname`, `department`, `site_name`, ...), a custom field as `cf.<name>` (lower case, `_`
for spaces), `user_id`, `event_kind`, `base_dn` (the connection's base DN), or after routing a connection
variable `var.<name>`. Filters follow `|`, their arguments `:` (`first:3`, `replace:old:new`). `{{` and `}}` are
literal braces. A field the event does not carry leaves the attribute alone (it never clears anything) unless
`default:` gives a value. In DN templates (OUs, groups, containers) every field's value is escaped as one RDN
value: a value can never add an RDN, so a table used in an OU gives one RDN value (`OU={department|map:ous}`),
never several.

### Filters

"""

CONDITIONS_INTRO = """\
### Conditions

`when` (of routing, OU, group and scope rules, steps and ticket request types) maps field names to what each
must hold; every field must match. A field the event lacks matches nothing, negated or not: a rule that reads
it decides nothing (an OU rule then leaves the account where it is). A field name with a dot is quoted in
TOML (`"cf.employee_type" = ...`, `"var.tier" = ...`): unquoted, TOML reads it as a nested table.

"""


def render_markdown() -> str:
    """The whole of ``docs/mapping.md``."""
    lines = [INTRO.rstrip("\n"), "", *_filters(), "", CONDITIONS_INTRO.rstrip("\n"), "", *_conditions(), ""]
    lines += ["## Sections", ""]
    for name, info in schema.Mapping.model_fields.items():
        if name != "digest":
            lines += _section(name, info)
    lines += ["## Actions", "", "Each lifecycle's step list names actions: a bare name, or a table with `action`, "
              "an optional `when` and the action's parameters. A parameter written as text is a template.", ""]  # fmt: skip  # noqa: E501
    lines += _actions()
    return "\n".join(lines).rstrip("\n") + "\n"


# The JSON Schema ------------------------------------------------------------------------------------------


def _strip_patterns(node: Any) -> Any:
    """Parameters are templates, checked after rendering: a pattern or a length fits the result, not the text."""
    if isinstance(node, dict):
        return {k: _strip_patterns(v) for k, v in node.items() if k not in ("pattern", "minLength", "maxLength")}
    if isinstance(node, list):
        return [_strip_patterns(v) for v in node]
    return node


def _merge_defs(defs: dict[str, Any], more: dict[str, Any]) -> None:
    for name, definition in more.items():
        if name in defs and defs[name] != definition:
            raise RuntimeError(f"two schema definitions are named {name}")
        defs[name] = definition


def _describe(definition: dict[str, Any], model: type[BaseModel]) -> None:
    """Each property's comment as its description (editors show it on hover and in completion)."""
    comments = field_comments(model)
    for name, info in model.model_fields.items():
        prop = definition.get("properties", {}).get(info.alias or name)
        if prop is not None and comments.get(name) and "description" not in prop:
            prop["description"] = comments[name]


def _models() -> dict[str, type[BaseModel]]:
    """Every model the schema has a definition of, by name: the mapping's and the actions' params."""
    roots = [m for m in vars(schema).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    roots += [info.params for info in registry().values() if info.params is not None]
    found: dict[str, type[BaseModel]] = {}
    while roots:
        model = roots.pop()
        if model.__name__ in found:
            continue
        found[model.__name__] = model
        for info in model.model_fields.values():
            args = (info.annotation, *get_args(info.annotation))
            args += tuple(b for a in args for b in get_args(a))
            roots += [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return found


def render_json_schema() -> str:
    """The whole of ``docs/mapping.schema.json``."""
    root = schema.Mapping.model_json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = root.pop("$defs")
    root["properties"].pop("digest")
    step = defs.pop("StepSpec")
    _describe(step, schema.StepSpec)
    common = {"action": None, "when": step["properties"]["when"]}
    branches: list[dict[str, Any]] = [{"type": "string", "enum": sorted(registry()), "description": "an action"}]
    for name, info in sorted(registry().items()):
        properties: dict[str, Any] = {**common, "action": {"const": name, "description": info.description}}
        required = ["action"]
        if info.params is None:
            properties.update({key: step["properties"][key] for key in AD_STEP_KEYS.get(name, ())})
            if name in ("apply_template", "add_to_groups", "remove_from_groups"):
                required += list(AD_STEP_KEYS[name])
        else:
            params = _strip_patterns(info.params.model_json_schema(ref_template="#/$defs/{model}"))
            _describe(params, info.params)
            if "skus" in params.get("properties", {}) and name == "assign_licenses":
                # AssignLicenses takes a SKU name for { sku = name } (its before-validator).
                items = params["properties"]["skus"]["items"]
                params["properties"]["skus"]["items"] = {"anyOf": [{"type": "string"}, items]}
            _merge_defs(defs, params.pop("$defs", {}))
            properties.update(params.get("properties", {}))
            properties.setdefault("after_days", step["properties"]["after_days"])
            required += [r for r in params.get("required", []) if r not in required]
        definition = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
        defs[f"Step_{name}"] = {"title": name, "description": info.description, **definition}
        branches.append({"$ref": f"#/$defs/Step_{name}"})
    defs["StepSpec"] = {"description": "one step: an action name, or a table with action, when and parameters",
                        "anyOf": branches}  # fmt: skip
    models = _models()
    for name, definition in defs.items():
        if name in models:
            _describe(definition, models[name])
    _describe(root, schema.Mapping)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **root,
        "$defs": dict(sorted(defs.items())),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Write both files; print their paths."""
    DOC.write_text(render_markdown(), encoding="utf-8")
    JSON_SCHEMA.write_text(render_json_schema(), encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)} and {JSON_SCHEMA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
