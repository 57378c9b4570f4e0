"""Home-folder paths: only plain folders strictly below a configured root; Halo field values cannot escape."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lifecycle.errors import ConfigurationError
from lifecycle.mapping.planner import plan
from lifecycle.mapping.schema import Lifecycles, Mapping
from lifecycle.targets.files_actions import (
    FileRoot,
    SetHomeDirectoryParams,
    UnsafePath,
    check_path_syntax,
    expand_account_placeholders,
    resolve,
)
from lifecycle.work import LifecycleEvent

ROOTS = {
    "staff": FileRoot(path="\\\\files.corp\\home$"),
    "archive": FileRoot(path="\\\\files.corp\\home$\\_archive"),
    "local": FileRoot(path="/srv/home"),
}


def test_a_folder_below_a_root_resolves_to_that_root_and_its_components() -> None:
    path = resolve("\\\\files.corp\\home$\\jdoe", ROOTS)
    assert (path.root, path.parts) == ("staff", ("jdoe",))


def test_smb_names_compare_case_insensitively_and_forward_slashes_separate() -> None:
    assert resolve("//FILES.CORP/Home$/jdoe/docs", ROOTS).parts == ("jdoe", "docs")


def test_the_most_specific_root_wins() -> None:
    path = resolve("\\\\files.corp\\home$\\_archive\\jdoe", ROOTS)
    assert (path.root, path.parts) == ("archive", ("jdoe",))


def test_local_paths_compare_exactly() -> None:
    assert resolve("/srv/home/jdoe", ROOTS).parts == ("jdoe",)
    with pytest.raises(UnsafePath, match="not below any configured"):
        resolve("/SRV/home/jdoe", ROOTS)


@pytest.mark.parametrize(
    "path",
    [
        "\\\\files.corp\\home$\\../../etc",  # a surname of ../../etc rendered into a template
        "\\\\files.corp\\home$\\..\\..\\etc",
        "/srv/home/../../etc/passwd",
        "/srv/home/./jdoe",
        "\\\\files.corp\\home$\\C:\\Windows",  # a drive letter injected into a component
        "\\\\files.corp\\home$\\jdoe:secret",  # an alternate data stream
        "\\\\files.corp\\home$\\NUL",
        "\\\\files.corp\\home$\\com1.txt",
        "\\\\files.corp\\home$\\jdoe.",
        "\\\\files.corp\\home$\\jd\x00oe",
        "\\\\files.corp\\home$\\jdoe\\\\x",  # an empty component
    ],
)
def test_traversal_and_reserved_names_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        resolve(path, ROOTS)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("\\\\evil.example\\share\\jdoe", "not below any configured"),
        ("\\\\files.corp\\other$\\jdoe", "not below any configured"),
        ("/etc/passwd", "not below any configured"),
        ("C:\\Users\\jdoe", "neither a UNC path"),
        ("jdoe", "neither a UNC path"),
        ("\\\\files.corp\\home$", "the root 'staff' itself"),
        ("\\\\files.corp\\home$\\", "the root 'staff' itself"),
        ("/srv/home", "the root 'local' itself"),
    ],
)
def test_paths_outside_the_roots_or_a_root_itself_are_refused(path: str, reason: str) -> None:
    with pytest.raises(UnsafePath, match=reason):
        resolve(path, ROOTS)


def test_a_folder_that_contains_another_root_is_refused() -> None:
    roots = {"staff": ROOTS["staff"], "deep": FileRoot(path="\\\\files.corp\\home$\\team\\archive")}
    with pytest.raises(UnsafePath, match="contains the configured root 'deep'"):
        resolve("\\\\files.corp\\home$\\team", roots)


def test_a_root_must_be_a_share_or_an_absolute_path() -> None:
    with pytest.raises(ValueError, match="neither a UNC path"):
        FileRoot(path="home$")
    with pytest.raises(ValueError, match=r"'\.\.'"):
        FileRoot(path="/srv/../etc")


def test_run_time_placeholders_are_filled_from_the_account_case_insensitively() -> None:
    attributes = {"samaccountname": ["jdoe"], "department": ["Sales"]}
    text = "\\\\files.corp\\home$\\{department|lower}\\{sAMAccountName}"
    assert expand_account_placeholders(text, attributes) == "\\\\files.corp\\home$\\sales\\jdoe"


def test_a_path_needing_the_account_is_refused_without_one() -> None:
    with pytest.raises(UnsafePath, match="needs the AD account"):
        expand_account_placeholders("\\\\files.corp\\home$\\{samaccountname}", None)
    with pytest.raises(UnsafePath, match="lacks"):
        expand_account_placeholders("\\\\files.corp\\home$\\{mail}", {"samaccountname": ["jdoe"]})


def test_braces_in_a_halo_field_cannot_become_placeholders_that_escape() -> None:
    # The planner rendered a surname of "}{../" into the text: the second rendering refuses it.
    with pytest.raises(UnsafePath, match="not a valid template"):
        expand_account_placeholders("\\\\files.corp\\home$\\}{../", {"samaccountname": ["jdoe"]})


def test_set_home_directory_checks_syntax_and_drive_letters() -> None:
    check_path_syntax("\\\\files.corp\\home$\\jdoe")
    with pytest.raises(UnsafePath):
        check_path_syntax("\\\\files.corp\\home$\\..\\admin")
    with pytest.raises(UnsafePath, match="names a share"):
        check_path_syntax("\\\\files.corp\\home$")
    assert SetHomeDirectoryParams(drive="h:").drive == "H:"
    with pytest.raises(ValueError, match="drive letter"):
        SetHomeDirectoryParams(drive="H:\\")


def _mapping_with(example: Mapping, mover: list[dict[str, object]]) -> Mapping:
    lifecycles = example.lifecycles.model_dump()
    lifecycles["mover"] = mover
    return example.model_copy(update={"lifecycles": Lifecycles.model_validate(lifecycles)})


def _event(**user: object) -> LifecycleEvent:
    return LifecycleEvent(
        kind="updated",
        user_id=77,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        source="webhook",
        user={"id": 77, "name": "Jo Doe", "firstname": "Jo", "surname": "Doe", **user},
    )


def test_the_planner_fills_halo_fields_and_leaves_account_placeholders_for_run_time(example_mapping: Mapping) -> None:
    mapping = _mapping_with(
        example_mapping,
        [
            {
                "action": "move_home_folder",
                "destination": "\\\\files.corp\\home$\\{department|lower}\\{{samaccountname}}",
            },
            {"action": "set_home_directory", "path": "\\\\files.corp\\home$\\{department|lower}\\{{samaccountname}}"},
        ],
    )
    item = plan(_event(department="Sales"), mapping, work_id="w", status="active")
    move, attribute = item.steps
    assert (move.system, move.params) == ("files", {"destination": "\\\\files.corp\\home$\\sales\\{samaccountname}"})
    assert attribute.system == "ad" and attribute.params["path"] == move.params["destination"]


def test_a_destination_whose_halo_field_is_absent_is_left_out_not_guessed(example_mapping: Mapping) -> None:
    mapping = _mapping_with(
        example_mapping, [{"action": "move_home_folder", "destination": "\\\\files.corp\\home$\\{department}\\x"}]
    )
    (step,) = plan(_event(), mapping, work_id="w", status="active").steps
    assert step.params == {}


def test_an_unknown_home_folder_parameter_is_a_mapping_error(example_mapping: Mapping) -> None:
    mapping = _mapping_with(example_mapping, [{"action": "delete_home_folder", "recursive": "yes"}])
    with pytest.raises(ConfigurationError, match="recursive"):
        plan(_event(), mapping, work_id="w", status="active")
