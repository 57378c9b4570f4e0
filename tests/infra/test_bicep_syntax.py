"""Every template parses, every symbol it uses is declared, and the modules are wired correctly.

The Bicep compiler cannot be downloaded here, so this is the offline stand-in for the part of
``bicep build`` that needs no resource schemas: syntax (tree-sitter-bicep, with file, line and
column), undeclared symbols, module paths, module parameters and module outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.infra import bicep_model as bicep
from tests.infra.conftest import INFRA, bicep_files, mutate

FILES = [path.relative_to(INFRA).as_posix() for path in bicep_files()]


def test_there_is_a_main_template_and_modules_under_infra() -> None:
    assert "main.bicep" in FILES
    assert {
        "modules/functionapp.bicep",
        "modules/identity.bicep",
        "modules/keyvault.bicep",
        "modules/monitoring.bicep",
        "modules/network.bicep",
        "modules/roles.bicep",
        "modules/servicebus.bicep",
        "modules/storage.bicep",
    } <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_every_bicep_file_parses_without_syntax_errors(templates: dict[str, bicep.BicepFile], name: str) -> None:
    problems = templates[name].problems
    assert not problems, "syntax errors:\n" + "\n".join(map(str, problems))


def test_a_syntax_error_is_reported_with_its_file_line_and_column(parser_ready: None, infra_copy: Path) -> None:
    broken = infra_copy / "modules" / "servicebus.bicep"
    mutate(broken, "    requiresSession: true\n", "    requiresSession: true,,\n")
    problems = bicep.parse_file(broken).problems
    assert problems
    line = broken.read_text(encoding="utf-8").splitlines().index("    requiresSession: true,,") + 1
    assert any(p.path == broken and p.line == line for p in problems), problems
    assert re.match(rf"^{re.escape(str(broken))}:{line}:\d+: ", str(problems[0]))


@pytest.mark.parametrize("name", FILES)
def test_every_symbol_a_template_uses_is_declared(templates: dict[str, bicep.BicepFile], name: str) -> None:
    problems = bicep.undeclared_references(templates[name])
    assert not problems, "\n".join(map(str, problems))


def test_a_misspelt_symbol_is_caught(parser_ready: None, infra_copy: Path) -> None:
    path = infra_copy / "modules" / "roles.bicep"
    mutate(path, "  scope: vault\n", "  scope: vualt\n")
    problems = bicep.undeclared_references(bicep.parse_file(path))
    assert [p.message for p in problems] == ["undeclared symbol 'vualt'"]


def _module_wiring_problems(files: dict[str, bicep.BicepFile], root: Path) -> list[str]:
    problems = []
    for name, model in files.items():
        for module in model.modules.values():
            target = (root / Path(name).parent / module.path).resolve()
            where = f"{name}:{module.line} module {module.symbol}"
            if not target.exists():
                problems.append(f"{where}: {module.path} does not exist")
                continue
            declared = bicep.parse_file(target).params
            passed = set(module.params)
            for unknown in sorted(passed - set(declared)):
                problems.append(f"{where}: passes {unknown!r}, which {module.path} does not declare")
            for required in sorted(p.name for p in declared.values() if p.required and p.name not in passed):
                problems.append(f"{where}: does not pass required parameter {required!r}")
        for symbol, output, line, column in bicep.module_output_references(model):
            module_path = (root / Path(name).parent / model.modules[symbol].path).resolve()
            if module_path.exists() and output not in bicep.parse_file(module_path).outputs:
                problems.append(f"{name}:{line}:{column}: {symbol}.outputs.{output} is not an output of the module")
    return problems


def test_every_module_exists_and_receives_exactly_the_parameters_it_declares(
    templates: dict[str, bicep.BicepFile],
) -> None:
    assert _module_wiring_problems(templates, INFRA) == []


def test_a_module_parameter_that_is_misspelt_or_missing_is_caught(parser_ready: None, infra_copy: Path) -> None:
    main = infra_copy / "main.bicep"
    mutate(main, "    maxDeliveryCount: maxDeliveryCount\n", "    maxDeliveryCnt: maxDeliveryCount\n")
    files = {p.relative_to(infra_copy).as_posix(): bicep.parse_file(p) for p in bicep_files(infra_copy)}
    problems = _module_wiring_problems(files, infra_copy)
    assert any("passes 'maxDeliveryCnt'" in p for p in problems), problems
    assert any("does not pass required parameter 'maxDeliveryCount'" in p for p in problems), problems


def test_a_module_output_that_does_not_exist_is_caught(parser_ready: None, infra_copy: Path) -> None:
    main = infra_copy / "main.bicep"
    mutate(main, "output keyVaultName string = keyVault.outputs.name\n",
           "output keyVaultName string = keyVault.outputs.vaultName\n")
    files = {p.relative_to(infra_copy).as_posix(): bicep.parse_file(p) for p in bicep_files(infra_copy)}
    problems = _module_wiring_problems(files, infra_copy)
    assert any("keyVault.outputs.vaultName is not an output" in p for p in problems), problems


@pytest.mark.parametrize("name", FILES)
def test_every_resource_names_a_provider_type_and_a_dated_api_version(
    templates: dict[str, bicep.BicepFile], name: str
) -> None:
    for resource in templates[name].resources.values():
        assert re.fullmatch(r"Microsoft\.[A-Za-z]+(/[A-Za-z]+)+", resource.type), resource.type
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", resource.api_version), (
            f"{name}: {resource.symbol} has API version {resource.api_version!r}"
        )


@pytest.mark.parametrize("name", FILES)
def test_every_parameter_is_described(templates: dict[str, bicep.BicepFile], name: str) -> None:
    undocumented = [p.name for p in templates[name].params.values() if "description" not in p.decorators]
    assert undocumented == [], f"{name}: parameters without @description: {undocumented}"
