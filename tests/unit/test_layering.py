"""Dependencies point down: the rules of docs/development.md, read from the code's own imports.

Each rule parses the modules with ``ast`` (nothing is imported or run), so a new import that breaks a rule
fails here, whether or not it would ever run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lifecycle"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-local and TYPE_CHECKING imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A relative import is always one of ours.
                names.add("lifecycle." + (node.module or ""))
            elif node.module is not None:
                names.add(node.module)
                # ``from lifecycle import deadline`` imports the module lifecycle.deadline.
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def ours(name: str) -> bool:
    return name == "lifecycle" or name.startswith("lifecycle.")


# settings.py builds its fields from settings_models.py (the value models and the invocation budget), and
# nothing else of ours; settings_models.py and errors.py import nothing of ours at all.
MAY_IMPORT = {"settings.py": "lifecycle.settings_models"}


@pytest.mark.parametrize("module", ["settings.py", "settings_models.py", "errors.py"])
def test_settings_and_errors_import_nothing_of_ours(module: str) -> None:
    allowed = MAY_IMPORT.get(module)
    found = sorted(
        name
        for name in imported_modules(PACKAGE / module)
        if ours(name) and not (allowed and (name == allowed or name.startswith(allowed + ".")))
    )
    assert found == [], f"lifecycle/{module} imports {found}: it must depend on nothing of ours"


def test_the_rule_reads_imports_it_would_have_to_refuse(tmp_path: Path) -> None:
    # The check above must see each form of import, or it passes whatever settings.py does.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import json\n"
        "from lifecycle import deadline\n"
        "def f():\n"
        "    from lifecycle.targets.files_actions import FileRoot\n"
        "    import lifecycle.runtime\n"
        "from .errors import ConfigurationError\n",
        encoding="utf-8",
    )
    assert sorted(name for name in imported_modules(sample) if ours(name)) == [
        "lifecycle",
        "lifecycle.deadline",
        "lifecycle.errors",
        "lifecycle.runtime",
        "lifecycle.targets.files_actions",
        "lifecycle.targets.files_actions.FileRoot",
    ]


def test_targets_never_import_the_runtime() -> None:
    # The runtime builds the targets and hands each a TargetContext (lifecycle/targets/__init__.py); a target
    # importing the runtime back, even for its type, ties every target to everything the runtime wires.
    offenders = {
        path.relative_to(PACKAGE).as_posix()
        for path in sorted((PACKAGE / "targets").rglob("*.py"))
        if any(name == "lifecycle.runtime" or name.startswith("lifecycle.runtime.") for name in imported_modules(path))
    }
    assert offenders == set(), f"targets import lifecycle.runtime: {sorted(offenders)}; hand them what they need"


def target_system(relative: str) -> str:
    """The system a module under lifecycle/targets/ belongs to (its package, or its name's prefix)."""
    if relative.startswith("graph/") or relative == "graph_actions.py":
        return "graph"
    stem = relative.removesuffix(".py")
    if stem == "ad" or stem.startswith("ad_"):
        return "ad"
    if stem == "homefolders" or stem.startswith(("files_", "smb_")):
        return "files"
    if stem.startswith("script"):
        return "scripts"
    if stem.startswith("halo_"):
        return "halo"
    return stem


# What every target may import: the port (StepContext, StepResult, TargetContext), the action vocabularies
# (parameter models lifecycle/actions.py collects), and the AD account as steps read it (the worker hands each
# step the person's AD account, so every system reads that model without importing the AD target).
SHARED_TARGET_MODULES = {"__init__.py", "ad_model.py"} | {
    path.name for path in (PACKAGE / "targets").glob("*_actions.py")
}


def test_targets_never_import_each_other() -> None:
    targets = PACKAGE / "targets"
    offenders = []
    for path in sorted(targets.rglob("*.py")):
        relative = path.relative_to(targets).as_posix()
        for name in sorted(imported_modules(path)):
            if not name.startswith("lifecycle.targets."):
                continue
            parts = name.removeprefix("lifecycle.targets.").split(".")
            candidates = [f"{'/'.join(parts[:n])}.py" for n in range(len(parts), 0, -1)]
            candidates += [f"{'/'.join(parts[:n])}/__init__.py" for n in range(len(parts), 0, -1)]
            module = next((c for c in candidates if (targets / c).is_file()), None)
            if module is None or module in SHARED_TARGET_MODULES:
                continue  # a name imported from a module (lifecycle.targets.ad.Account), or a shared module
            if target_system(module) != target_system(relative):
                offenders.append(f"{relative} -> {name}")
    assert offenders == [], f"targets import other targets (hand them what they need instead): {offenders}"


def test_queue_modules_import_no_store() -> None:
    # The Service Bus queue parks permanent failures through its own port (DeadLetterParking); the runtime
    # hands it the Table store's parking, so the queue layer can change without the state layer.
    offenders = {
        path.relative_to(PACKAGE).as_posix(): found
        for path in sorted((PACKAGE / "queue").rglob("*.py"))
        if (found := sorted(name for name in imported_modules(path) if name.startswith("lifecycle.state")))
    }
    assert offenders == {}, f"queue modules import the state layer: {offenders}"


# No module past ~600 lines: a longer one mixes things that change for different reasons (split it by what
# changes together). A module over the limit is listed here with why it is still there, and may only leave the
# list; none is today.
MAX_MODULE_LINES = 600
OVER_THE_LIMIT: dict[str, str] = {}


def module_lines() -> dict[str, int]:
    return {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_no_module_is_longer_than_the_limit_beyond_the_listed_ones() -> None:
    lines = module_lines()
    over = {name: count for name, count in lines.items() if count > MAX_MODULE_LINES}
    unlisted = {name: count for name, count in over.items() if name not in OVER_THE_LIMIT}
    assert unlisted == {}, f"modules past {MAX_MODULE_LINES} lines (split by what changes together): {unlisted}"
    back_under = sorted(name for name in OVER_THE_LIMIT if lines.get(name, 0) <= MAX_MODULE_LINES)
    assert back_under == [], f"within the limit now (or gone): remove from OVER_THE_LIMIT: {back_under}"
