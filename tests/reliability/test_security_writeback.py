"""Issue 14, write-back: a Halo field that holds an account fact's name is written back as that text.

The write-back target read a planned value without braces as the name of an account fact (the mapping's
shorthand, ``samaccountname = "samaccountname"``). A mapping value rendered from Halo first (``"{surname}"``)
then became a second-order placeholder: a person whose surname is ``dn`` had their directory DN written into
their Halo fields. The planner now braces the mapping's bare fact names before its first render, and the target
takes an unbraced planned value as text. This test failed on the code before (the DN was written).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from lifecycle.mapping.schema import Mapping, parse_mapping
from tests.conftest import ROOT
from tests.integration.conftest import delivery, new_user
from tests.integration.test_halo_api_with_ad import halo_client
from tests.reliability.conftest import JOINER_LINE, Harness
from tests.standins.halo import HaloStandIn, UserSet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEP = (
    '{ action = "halo_writeback", fields = { samaccountname = "samaccountname", jobtitle = "{surname}" }, '
    'customfields = [{ name = "CFSurname", value = "{surname}" }, { id = 102, value = "upn" }] }'
)


def _mapping() -> Mapping:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    assert JOINER_LINE in text
    return parse_mapping(text.replace(JOINER_LINE, JOINER_LINE[:-1] + f", {STEP}]"), "write-back of a Halo field")


@pytest.fixture
def standin() -> Iterator[HaloStandIn]:
    halo = HaloStandIn(UserSet(0, first_id=7_100_000), rate_limit=100_000, rate_window=1.0).start()
    yield halo
    halo.stop()


def _service(harness: Callable[..., Harness], standin: HaloStandIn) -> Harness:
    """The service with the write-back mapping, talking to the Halo stand-in."""
    service = harness(
        mapping=_mapping(),
        halo_api_url=standin.url,
        halo_client_id=standin.client_id,
        halo_client_secret=standin.client_secret,
        halo_ca_file=standin.ca_file,
    )
    service.runtime.__dict__["halo"] = halo_client(standin)
    return service


def test_a_halo_field_holding_a_fact_name_is_written_back_literally_not_as_that_fact(
    harness: Callable[..., Harness], standin: HaloStandIn
) -> None:
    service = _service(harness, standin)
    person = standin.users.add(new_user("Dana", "dn"))
    assert service.post(delivery("created", person)).status == 202
    assert service.worker is not None
    while (message := service.runtime.queue.receive(timeout=0)) is not None:
        assert service.worker.process_message(message).outcome == "completed"
    account = service.account(person["id"])
    assert account is not None
    [[written]] = standin.writes
    assert written["jobtitle"] == "dn"  # the surname, as text: not the account's DN
    assert written["samaccountname"] == account["sAMAccountName"]  # the mapping's shorthand still names a fact
    assert written["customfields"] == [
        {"name": "CFSurname", "value": "dn"},
        {"id": 102, "value": account["userPrincipalName"]},
    ]
    assert account["dn"] not in str(written)


def test_a_write_back_step_planned_before_the_fix_still_reads_its_bare_names_as_facts(
    harness: Callable[..., Harness], standin: HaloStandIn
) -> None:
    """A work item queued (or a ticket's dated phase approved) before the planner braced bare names carries
    ``samaccountname = "samaccountname"`` unbraced and no ``braced`` mark: it still writes the fact, as it was
    planned, instead of the literal word. Newly planned steps carry the mark."""
    from lifecycle.mapping.planner import plan
    from lifecycle.people import normalise_user
    from lifecycle.queue import message_for
    from lifecycle.work import LifecycleEvent, Step

    service = _service(harness, standin)
    person = standin.users.add(new_user("Olga", "Oldplan"))
    user = normalise_user(person)
    event = LifecycleEvent(
        kind="created", user_id=person["id"], occurred_at=datetime.now(UTC), source="webhook", user=user
    )
    item = plan(event, service.runtime.mapping, work_id="old-plan-1", context=service.runtime.plan_context)
    [writeback] = [s for s in item.steps if s.action == "halo_writeback"]
    assert writeback.params["braced"] is True and writeback.params["fields"]["samaccountname"] == "{samaccountname}"
    old_params = {"fields": {"samaccountname": "samaccountname"}, "customfields": [{"id": 102, "value": "upn"}]}
    old = Step.model_validate({**writeback.model_dump(), "params": old_params})
    item = item.model_copy(update={"steps": [old if s.key == writeback.key else s for s in item.steps]})
    service.runtime.queue.send([message_for(item)])
    assert service.worker is not None
    message = service.runtime.queue.receive(timeout=0)
    assert message is not None and service.worker.process_message(message).outcome == "completed"
    account = service.account(person["id"])
    assert account is not None
    [[written]] = standin.writes
    assert written["samaccountname"] == account["sAMAccountName"]
    assert written["customfields"] == [{"id": 102, "value": account["userPrincipalName"]}]
