"""A small, read-only model of Bicep files, built from the tree-sitter-bicep syntax tree.

The Bicep compiler cannot run on these machines, so the infrastructure tests parse the templates
with tree-sitter and assert on this model. It keeps what the tests need and no more:

* declarations: parameters (with decorators and defaults), variables, resources (type, API
  version, ``existing``, condition, loop, body), modules (path, condition, params) and outputs;
* values as Python: object literals become ``dict``, arrays ``list``, plain strings ``str``,
  numbers ``int``, ``true``/``false`` ``bool``, ``null`` ``None``; an identifier becomes
  :class:`Ref`, a string with ``${...}`` :class:`Interp`, anything else :class:`Expr`
  (its source text and node, for the few tests that look inside);
* syntax problems with file, line and column.

It is not a type checker: it knows nothing of resource schemas or API versions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import tree_sitter
    from tree_sitter import Node


@dataclass(frozen=True)
class Ref:
    """A reference to a symbol (parameter, variable, resource, module or loop variable)."""

    name: str


@dataclass(frozen=True)
class Interp:
    """A string with interpolations; ``template`` is its text between the quotes, as written."""

    template: str
    refs: tuple[str, ...]


@dataclass(frozen=True)
class Expr:
    """Any other expression: a call, a ternary, a member access, an operator..."""

    kind: str
    source: str
    node: Node = field(compare=False, repr=False)

    @property
    def call_name(self) -> str | None:
        """The function name when this is a call (``union``, ``string``, ``guid``...)."""
        if self.kind != "call_expression":
            return None
        first = self.node.named_children[0]
        return _text(first) if first.type == "identifier" else None

    @property
    def arguments(self) -> list[Value]:
        """The converted arguments of a call; empty for anything else."""
        if self.kind != "call_expression":
            return []
        args = next((c for c in self.node.named_children if c.type == "arguments"), None)
        return [] if args is None else [to_value(a) for a in args.named_children if a.type != "comment"]

    def operands(self) -> list[Value]:
        """The converted named children (e.g. condition, then, else of a ternary)."""
        return [to_value(c) for c in self.node.named_children if c.type != "comment"]


Value: TypeAlias = str | int | bool | list["Value"] | dict[str, "Value"] | Ref | Interp | Expr | None


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


@dataclass(frozen=True)
class SyntaxProblem:
    """One ERROR or MISSING node of the syntax tree."""

    path: Path
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


@dataclass
class Decorated:
    decorators: dict[str, list[Value]]
    line: int


@dataclass
class Param(Decorated):
    name: str
    type: str
    default: Value | _Missing

    @property
    def secure(self) -> bool:
        return "secure" in self.decorators

    @property
    def required(self) -> bool:
        return self.default is MISSING


@dataclass
class Variable(Decorated):
    name: str
    value: Value


@dataclass
class Resource(Decorated):
    symbol: str
    type: str
    api_version: str
    existing: bool
    condition: Value | None
    looped: bool
    body: dict[str, Value]
    source: str


@dataclass
class Module(Decorated):
    symbol: str
    path: str
    condition: Value | None
    looped: bool
    body: dict[str, Value]

    @property
    def params(self) -> dict[str, Value]:
        params = self.body.get("params", {})
        assert isinstance(params, dict)
        return params


@dataclass
class Output(Decorated):
    name: str
    type: str
    value: Value


@dataclass
class BicepFile:
    path: Path
    source: bytes
    root: Node
    params: dict[str, Param]
    variables: dict[str, Variable]
    resources: dict[str, Resource]
    modules: dict[str, Module]
    outputs: dict[str, Output]
    problems: list[SyntaxProblem]

    def declared_symbols(self) -> set[str]:
        return set(self.params) | set(self.variables) | set(self.resources) | set(self.modules)

    def resources_of_type(self, resource_type: str) -> list[Resource]:
        return [r for r in self.resources.values() if r.type.lower() == resource_type.lower()]


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def tools_missing() -> str | None:
    """Why the parser cannot run here (None when it can)."""
    try:
        import tree_sitter
        import tree_sitter_bicep
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -r requirements-dev.txt)"
    try:
        tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))
    except ValueError as exc:  # a grammar built for another tree-sitter ABI
        return f"tree-sitter cannot load tree-sitter-bicep: {exc}"
    return None


@lru_cache(maxsize=1)
def _parser() -> tree_sitter.Parser:
    import tree_sitter
    import tree_sitter_bicep

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))


def _text(node: Node) -> str:
    return (node.text or b"").decode("utf-8")


_ESCAPES = re.compile(r"\\(u\{[0-9A-Fa-f]+\}|.)")
_ESCAPE_MAP = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", "$": "$"}


def _unescape(raw: str) -> str:
    def repl(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("u{"):
            return chr(int(token[2:-1], 16))
        return _ESCAPE_MAP.get(token, token)

    return _ESCAPES.sub(repl, raw)


def _string_value(node: Node) -> str | Interp:
    raw = _text(node)
    if raw.startswith("'''"):
        return raw[3:-3]
    inner = raw[1:-1]
    interpolations = [c for c in node.named_children if c.type == "interpolation"]
    if not interpolations:
        return _unescape(inner)
    refs = tuple(sorted({_text(i) for n in interpolations for i in _walk(n) if i.type == "identifier"}))
    return Interp(template=inner, refs=refs)


def to_value(node: Node) -> Value:
    """Convert an expression node to a Python value (see the module docstring)."""
    kind = node.type
    if kind == "parenthesized_expression":
        inner = [c for c in node.named_children if c.type != "comment"]
        return to_value(inner[0]) if len(inner) == 1 else Expr(kind, _text(node), node)
    if kind == "object":
        result: dict[str, Value] = {}
        for prop in node.named_children:
            if prop.type != "object_property":
                continue
            parts = [c for c in prop.named_children if c.type not in ("comment", "decorators")]
            key_node, value_node = parts[0], parts[-1]
            key = _string_value(key_node) if key_node.type == "string" else _text(key_node)
            result[key if isinstance(key, str) else key.template] = to_value(value_node)
        return result
    if kind == "array":
        return [to_value(c) for c in node.named_children if c.type != "comment"]
    if kind == "string":
        return _string_value(node)
    if kind == "number":
        return int(_text(node))
    if kind == "boolean":
        return _text(node) == "true"
    if kind == "null":
        return None
    if kind == "identifier":
        return Ref(_text(node))
    return Expr(kind, _text(node), node)


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _problems(path: Path, root: Node) -> list[SyntaxProblem]:
    problems = []
    for node in _walk(root):
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            if node.is_missing:
                message = f"missing {node.type!r}"
            else:
                snippet = _text(node).splitlines()[0][:60] if _text(node) else ""
                message = f"syntax error near {snippet!r}"
            problems.append(SyntaxProblem(path, line + 1, column + 1, message))
    return problems


def _decorators(node: Node | None) -> dict[str, list[Value]]:
    result: dict[str, list[Value]] = {}
    if node is None:
        return result
    for decorator in node.named_children:
        call = next((c for c in decorator.named_children if c.type == "call_expression"), None)
        if call is None:
            continue
        value = to_value(call)
        assert isinstance(value, Expr) and value.call_name is not None
        result[value.call_name] = value.arguments
    return result


def _body(node: Node) -> tuple[Value | None, bool, dict[str, Value]]:
    """(condition, looped, body object) of a resource or module value."""
    if node.type == "if_statement":
        parts = [c for c in node.named_children if c.type != "comment"]
        condition = to_value(parts[0])
        _, _, body = _body(parts[-1])
        return condition, False, body
    if node.type == "for_statement":
        parts = [c for c in node.named_children if c.type != "comment"]
        condition, _, body = _body(parts[-1])
        return condition, True, body
    value = to_value(node)
    assert isinstance(value, dict), f"unexpected resource body {node.type}"
    return None, False, value


def parse_source(path: Path, source: bytes) -> BicepFile:
    """Parse Bicep text (``path`` is only used in messages)."""
    root = _parser().parse(source).root_node
    model = BicepFile(path, source, root, {}, {}, {}, {}, {}, _problems(path, root))
    pending_decorators: Node | None = None
    for node in root.named_children:
        if node.type == "comment":
            continue
        if node.type == "decorators":
            pending_decorators = node
            continue
        decorators, pending_decorators = _decorators(pending_decorators), None
        line = node.start_point[0] + 1
        parts = [c for c in node.named_children if c.type != "comment"]
        try:
            if node.type == "parameter_declaration":
                name = _text(parts[0])
                default: Value | _Missing = to_value(parts[2]) if len(parts) > 2 else MISSING
                model.params[name] = Param(decorators, line, name, _text(parts[1]), default)
            elif node.type == "variable_declaration":
                name = _text(parts[0])
                model.variables[name] = Variable(decorators, line, name, to_value(parts[-1]))
            elif node.type == "resource_declaration":
                symbol = _text(parts[0])
                type_value = _string_value(parts[1])
                assert isinstance(type_value, str)
                resource_type, _, api_version = type_value.partition("@")
                existing = any(c.type == "existing" for c in node.children)
                condition, looped, body = _body(parts[-1])
                model.resources[symbol] = Resource(
                    decorators, line, symbol, resource_type, api_version, existing, condition, looped, body,
                    _text(node),
                )
            elif node.type == "module_declaration":
                symbol = _text(parts[0])
                module_path = _string_value(parts[1])
                assert isinstance(module_path, str)
                condition, looped, body = _body(parts[-1])
                model.modules[symbol] = Module(decorators, line, symbol, module_path, condition, looped, body)
            elif node.type == "output_declaration":
                name = _text(parts[0])
                model.outputs[name] = Output(decorators, line, name, _text(parts[1]), to_value(parts[-1]))
        except (AssertionError, IndexError) as exc:  # a broken declaration is a syntax problem too
            model.problems.append(SyntaxProblem(path, line, node.start_point[1] + 1, f"cannot read {node.type}: {exc}"))
    return model


def parse_file(path: Path) -> BicepFile:
    return parse_source(path, path.read_bytes())


# ---------------------------------------------------------------------------------------------
# Questions the tests ask
# ---------------------------------------------------------------------------------------------

# Identifiers that are not references: names being declared, object keys, function names.
_BUILTIN_NAMESPACES = {"az", "sys"}


def undeclared_references(model: BicepFile) -> list[SyntaxProblem]:
    """Identifiers used as values that no declaration (or enclosing loop) introduces."""
    declared = model.declared_symbols()
    problems: list[SyntaxProblem] = []

    def visit(node: Node, scope: frozenset[str]) -> None:
        kind = node.type
        if kind == "for_statement":
            loop_vars = set()
            for child in node.named_children:
                if child.type == "for_loop_parameters":
                    loop_vars |= {_text(c) for c in child.named_children}
            first = next((c for c in node.named_children if c.type == "identifier"), None)
            # `[for x in xs: ...]`: the first identifier is the loop variable, the second the source.
            named = [c for c in node.named_children if c.type != "comment"]
            if first is not None and named and named[0] is first:
                loop_vars.add(_text(first))
                named = named[1:]
            inner = scope | loop_vars
            for child in named:
                visit(child, inner)
            return
        if kind == "identifier":
            name = _text(node)
            if name not in declared and name not in scope and name not in _BUILTIN_NAMESPACES:
                line, column = node.start_point
                problems.append(SyntaxProblem(model.path, line + 1, column + 1, f"undeclared symbol {name!r}"))
            return
        children = [c for c in node.named_children if c.type != "comment"]
        skip_first = kind in {
            "parameter_declaration",
            "variable_declaration",
            "resource_declaration",
            "module_declaration",
            "output_declaration",
            "call_expression",
            "object_property",
        }
        for index, child in enumerate(children):
            if skip_first and index == 0 and child.type == "identifier":
                continue
            if kind == "decorator":
                continue  # decorator arguments are literals; names are functions
            visit(child, scope)

    visit(model.root, frozenset())
    return problems


def module_output_references(model: BicepFile) -> Iterator[tuple[str, str, int, int]]:
    """(module symbol, output name, line, column) for every ``module.outputs.name`` in the file."""
    for node in _walk(model.root):
        if node.type != "member_expression":
            continue
        parts = node.named_children
        if len(parts) != 2 or parts[1].type != "property_identifier":
            continue
        inner = parts[0]
        if inner.type != "member_expression":
            continue
        inner_parts = inner.named_children
        if (
            len(inner_parts) == 2
            and inner_parts[0].type == "identifier"
            and _text(inner_parts[0]) in model.modules
            and _text(inner_parts[1]) == "outputs"
        ):
            line, column = node.start_point
            yield _text(inner_parts[0]), _text(parts[1]), line + 1, column + 1


def object_literals(value: Value) -> Iterator[dict[str, Value]]:
    """Every object literal that an expression may evaluate to or merge from.

    Walks ``union(...)`` calls and both branches of ternaries, so a setting added conditionally
    (``union({...}, empty(x) ? {} : {KEY: x})``) still counts as set by the template.
    """
    if isinstance(value, dict):
        yield value
    elif isinstance(value, Expr):
        if value.call_name == "union":
            for argument in value.arguments:
                yield from object_literals(argument)
        elif value.kind == "ternary_expression":
            for operand in value.operands()[1:]:
                yield from object_literals(operand)


def merged_object(value: Value) -> dict[str, Value]:
    """The keys and values of every object literal in ``value`` (see :func:`object_literals`)."""
    merged: dict[str, Value] = {}
    for literal in object_literals(value):
        merged.update(literal)
    return merged


def source(value: Value | _Missing) -> str | None:
    """The source text of an expression (None for literals and references)."""
    return value.source if isinstance(value, Expr) else None


def dig(value: Value, *keys: str) -> Value | _Missing:
    """``value[k1][k2]...`` through nested object literals, or MISSING."""
    current: Value | _Missing = value
    for key in keys:
        if not isinstance(current, dict) or key not in current:
            return MISSING
        current = current[key]
    return current


def object_keys(model: BicepFile) -> set[str]:
    """Every key of every object literal in the file."""
    keys = set()
    for node in _walk(model.root):
        if node.type == "object_property":
            key = node.named_children[0]
            value = _string_value(key) if key.type == "string" else _text(key)
            keys.add(value if isinstance(value, str) else value.template)
    return keys


def skip_comments(model: BicepFile) -> list[tuple[int, str, str]]:
    """(line, check id, justification) of every ``checkov:skip=`` comment in the file."""
    found = []
    pattern = re.compile(r"checkov:skip=([A-Za-z0-9_]+)(?::(.*))?")
    for node in _walk(model.root):
        if node.type != "comment":
            continue
        match = pattern.search(_text(node))
        if match:
            found.append((node.start_point[0] + 1, match.group(1), (match.group(2) or "").strip()))
    return found
