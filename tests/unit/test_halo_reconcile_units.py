"""The pure parts of the Halo API work: fingerprints, completeness, work ids, the rate limiter, write-back params."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from lifecycle.fingerprints import fingerprint, is_complete, read_fields
from lifecycle.halo.client import LimiterBusy, RateLimiter, _retry_after, api_base
from lifecycle.mapping.schema import Mapping
from lifecycle.reconcile import reconcile_work_id
from lifecycle.targets.halo_actions import HaloWriteback
from lifecycle.targets.halo_writeback import halo_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def full_user(sample_user: dict[str, Any]) -> dict[str, Any]:
    user = copy.deepcopy(sample_user)
    user.update({"department": "Sales", "title": "Analyst", "mobilenumber": "", "ulastupdate": "2026-01-05T08:00:00"})
    return user


def test_the_fields_the_example_mapping_reads_are_the_ones_its_templates_and_rules_name(
    example_mapping: Mapping,
) -> None:
    fields = read_fields(example_mapping)
    assert {"firstname", "surname", "name", "department", "site_name", "client_name", "inactive"} <= fields
    # The planner's own values and the chosen sAMAccountName in the UPN pattern are not Halo fields.
    assert not fields & {"user_id", "base_dn", "event_kind", "samaccountname"}
    assert "login" not in fields and "activedirectory_dn" not in fields


def test_a_fingerprint_changes_with_a_field_the_mapping_reads_and_not_with_others(
    example_mapping: Mapping, sample_user: dict[str, Any]
) -> None:
    user = full_user(sample_user)
    before = fingerprint(example_mapping, user)
    written_back = {**user, "login": "baskar.balaji", "activedirectory_dn": "CN=Baskar Balaji,OU=Main"}
    assert fingerprint(example_mapping, written_back) == before
    moved = {**user, "department": "Engineering"}
    assert fingerprint(example_mapping, moved).partition("@")[0] != before.partition("@")[0]
    left = {**user, "inactive": True}
    assert fingerprint(example_mapping, left).partition("@")[0] != before.partition("@")[0]


def test_a_fingerprint_carries_ulastupdate_and_treats_halo_doubles_as_whole_numbers(
    example_mapping: Mapping, sample_user: dict[str, Any]
) -> None:
    user = full_user(sample_user)
    digest, _, stamp = fingerprint(example_mapping, user).partition("@")
    assert stamp == "2026-01-05T08:00:00" and len(digest) == 32
    assert fingerprint(example_mapping, {**user, "site_id": 18}) == fingerprint(example_mapping, user)
    no_stamp = {k: v for k, v in user.items() if k != "ulastupdate"}
    assert fingerprint(example_mapping, no_stamp) == digest


def test_a_list_item_without_a_field_the_mapping_reads_is_not_complete(
    example_mapping: Mapping, sample_user: dict[str, Any]
) -> None:
    # Halo's list sample lacks department and title, which the example mapping reads.
    assert not is_complete(example_mapping, sample_user)
    full = full_user(sample_user)
    full.update({k: "" for k in read_fields(example_mapping) if k not in full and not k.startswith("cf.")})
    assert is_complete(example_mapping, full)


def test_reconcile_work_ids_are_deterministic_per_user_kind_and_fingerprint() -> None:
    assert reconcile_work_id(26, "updated", "abc") == reconcile_work_id(26, "updated", "abc")
    assert reconcile_work_id(26, "updated", "abc") != reconcile_work_id(26, "updated", "abd")
    assert reconcile_work_id(26, "created", "abc") != reconcile_work_id(27, "created", "abc")
    assert reconcile_work_id(26, "created", "abc").startswith("rc-")


def test_the_rate_limiter_never_lets_more_than_the_limit_through_in_any_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(5, 10.0, clock=clock, sleep=clock.sleep)
    sent: list[float] = []
    for _ in range(23):
        with limiter.slot(max_wait=3600):
            sent.append(clock.now)
            clock.now += 0.25  # the answer takes a quarter of a second
    for i in range(len(sent) - 5):
        assert sent[i + 5] - sent[i] > 10.0
    assert limiter.waits > 0


def test_the_rate_limiter_refuses_a_wait_longer_than_the_callers_patience() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 60.0, clock=clock, sleep=clock.sleep)
    for _ in range(2):
        limiter.acquire(0)
        limiter.release()
    with pytest.raises(LimiterBusy) as caught:
        limiter.acquire(max_wait=5)
    assert 59 <= caught.value.wait <= 60
    assert clock.now == 1000.0  # it did not sleep in vain


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    def response(value: str | None) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value} if value is not None else {})

    assert _retry_after(response("7")) == 7.0
    assert _retry_after(response(None)) is None
    assert _retry_after(response("soon")) is None
    from datetime import UTC, datetime

    now = datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)
    assert _retry_after(response("Mon, 05 Jan 2026 08:00:30 GMT"), now) == 30.0


def test_the_api_url_may_be_given_with_or_without_api() -> None:
    assert api_base("https://contoso.haloitsm.com/api/") == "https://contoso.haloitsm.com"
    assert api_base("https://contoso.haloitsm.com") == "https://contoso.haloitsm.com"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"Login": "samaccountname"}, "not a Halo user field name"),
        ({"id": "samaccountname"}, "never sets"),
        ({"inactive": "samaccountname"}, "never sets"),
        ({"login": "{samaccountname|nosuchfilter}"}, "unknown filter"),
        ({"login": " "}, "empty value"),
    ],
)
def test_write_back_fields_are_validated_with_a_reason(fields: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HaloWriteback.model_validate({"fields": fields})
    assert problem in str(caught.value)


def test_write_back_accepts_fact_names_and_templates() -> None:
    params = HaloWriteback.model_validate({"fields": {"login": "samaccountname", "emailaddress": "{mail|lower}"}})
    assert params.fields == {"login": "samaccountname", "emailaddress": "{mail|lower}"}


def test_halo_values_compare_as_text() -> None:
    assert [halo_text(v) for v in (None, True, 18.0, 18.5, "x")] == ["", "true", "18", "18.5", "x"]
