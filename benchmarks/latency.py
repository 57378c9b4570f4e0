"""4. End-to-end latency: from the HTTP request to the change done in AD, sequential and at 4 concurrent requests.

The service is the local host (``LocalHost``: the HTTP ingress and worker threads woken by the embedded queue's
condition on enqueue) against a throwaway Samba AD DC. A client posts one joiner webhook over HTTP and the clock
stops when the worker has finished the item: its last LDAP write (the third member add) has been answered by the
DC, so the change is visible to any reader of that DC from then on. The stop time is taken by wrapping the host's
``process_message``, in the worker thread, the moment it returns. After each run one search checks that every
account exists with its 3 groups.

Floor, measured in the same run: the median time of one raw ldap3 add carrying the password and the enabled
flag (what the joiner's first write is; the DC's key derivation makes it the dominant cost of a joiner). Each floor
account then joins a group of its own (few members), and raw ldap3's member adds in the sequential run are timed,
with the member counts of the joiners' groups before and after it: Samba's member add slows as a group grows. Goals
(issue 20): sequentially, p95 within 2 times that floor; at 4 concurrent requests, p95 within 1.2 times raw ldap3
sending the same operations at the same concurrency (the floor is one add on an idle DC, which a DC serving
one operation at a time cannot give 4 joiners at once).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.common import (
    AUTH_HEADERS,
    SALES_GROUPS,
    Context,
    Result,
    Row,
    admin_connection,
    body,
    dc_settings,
    delivery,
    halo_user,
    median,
    percentile,
)
from benchmarks.raw_ldap import add_with_password, raw_joiner

KEY = "latency"
TITLE = "End-to-end latency"
CONCURRENCY = 4
GOAL_FACTOR = 2.0  # sequential p95 against one raw add with password
RAW_GOAL = 1.2  # concurrent p95 against raw ldap3 at the same concurrency


class _Completions:
    """Completion times of work items, by work id, recorded in the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._done: dict[str, tuple[float, str]] = {}

    def record(self, work_id: str, outcome: str) -> None:
        with self._lock:
            self._done[work_id] = (time.perf_counter(), outcome)
            self._lock.notify_all()

    def wait(self, work_id: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while work_id not in self._done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"work {work_id} not done after {timeout:.0f} s")
                self._lock.wait(remaining)
            return self._done.pop(work_id)


def _client(url: str) -> Callable[[bytes], str]:
    """A keep-alive HTTP client posting to the events route; returns the accepted work id."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)

    def post(payload: bytes) -> str:
        connection.request("POST", "/api/halo/events", body=payload, headers=AUTH_HEADERS)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 202:
            raise RuntimeError(f"ingress answered {response.status}: {answer[:300]!r}")
        accepted = json.loads(answer)["accepted"]
        return str(accepted[0]["work_id"])

    return post


def _run_load(url: str, completions: _Completions, users: list[dict[str, Any]], clients: int) -> list[float]:
    """Closed loop: ``clients`` threads, each posting one joiner and waiting for it to be done before the next."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    chunks = [users[i::clients] for i in range(clients)]

    def client(chunk: list[dict[str, Any]]) -> None:
        post = _client(url)
        try:
            for user in chunk:
                payload = body(delivery("created", user, f"bench-lat-{user['id']}"))
                started = time.perf_counter()
                work_id = post(payload)
                finished, outcome = completions.wait(work_id, timeout=60)
                if outcome != "completed":
                    raise RuntimeError(f"work {work_id}: {outcome}")
                with lock:
                    latencies.append(finished - started)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(chunk,), name=f"client-{i}") for i, chunk in enumerate(chunks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return latencies


def _verify(info: Any, users: list[dict[str, Any]]) -> int:
    """How many of ``users`` have an account with exactly the 3 expected groups (one paged search)."""
    import ldap3  # type: ignore[import-untyped]

    wanted = {str(u["id"]) for u in users}
    conn = admin_connection(info)
    try:
        entries = conn.extend.standard.paged_search(
            info.base_dn,
            "(&(objectClass=user)(employeeID=*))",
            ldap3.SUBTREE,
            attributes=["employeeID", "memberOf"],
            paged_size=500,
            generator=True,
        )
        good = 0
        for entry in entries:
            if entry.get("type") != "searchResEntry":
                continue
            attributes = entry["attributes"]
            anchor = attributes.get("employeeID")
            anchor = anchor[0] if isinstance(anchor, list) else anchor
            if str(anchor).removeprefix("halo:") not in wanted:  # the example mapping namespaces the anchor
                continue
            groups = {str(g).split(",", 1)[0][3:] for g in attributes.get("memberOf", [])}
            good += groups == set(SALES_GROUPS)
        return good
    finally:
        conn.unbind()


def _raw_concurrent(
    info: Any, mapping: Any, users: list[dict[str, Any]], clients: int, member_adds: list[float] | None = None
) -> list[float]:
    """The same joiners with raw ldap3 at the same concurrency: ``clients`` threads, one connection each (each
    member add's seconds go to ``member_adds`` when given)."""
    from benchmarks.raw_ldap import join

    joiners = [raw_joiner(user, mapping, info.base_dn) for user in users]
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(chunk: list[Any]) -> None:
        try:
            conn = admin_connection(info)
            try:
                for joiner in chunk:
                    started = time.perf_counter()
                    adds = join(conn, joiner)
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                        if member_adds is not None:
                            member_adds.extend(adds)
            finally:
                conn.unbind()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(joiners[i::clients],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return latencies


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if unknown)."""
    import os

    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _anchor_lookups(info: Any, user_id: int, repeat: int) -> tuple[float, float, int]:
    """(indexed, unindexed, accounts): median seconds of the worker's anchor search on ``employeeID`` (indexed
    on this DC) and of the same search on an attribute left unindexed (``employeeNumber``), and the accounts."""
    import ldap3

    conn = admin_connection(info)
    try:
        person = "(&(objectClass=user)(objectCategory=person)"
        timings: dict[str, list[float]] = {"employeeID": [], "employeeNumber": []}
        for _ in range(repeat):
            for attribute, values in timings.items():
                started = time.perf_counter()
                conn.search(info.base_dn, f"{person}({attribute}={user_id}))", ldap3.SUBTREE, attributes=["*"])
                values.append(time.perf_counter() - started)
        count = _count_entries(conn, info.base_dn, f"{person}(employeeID=*))")
        return median(timings["employeeID"]), median(timings["employeeNumber"]), count
    finally:
        conn.unbind()


def _floor(info: Any, mapping: Any, ids: Any, count: int, small_group: tuple[str, list[float]]) -> list[float]:
    """``count`` raw adds with password (their seconds); then the new accounts join ``small_group``'s group (a group
    of few members, next to the joiners' groups) one member add at a time, each add's seconds going to its list.

    The member adds come after all the adds: right after a password add a member add is slower on this DC, and
    the joiner's own member adds mostly follow one another."""
    import ldap3  # type: ignore[import-untyped]

    group, member_adds = small_group
    conn = admin_connection(info)
    try:
        joiners = [raw_joiner(halo_user(next(ids)), mapping, info.base_dn) for _ in range(count)]
        adds = [add_with_password(conn, joiner) for joiner in joiners]
        for joiner in joiners:
            started = time.perf_counter()
            conn.modify(group, {"member": [(ldap3.MODIFY_ADD, [joiner.dn])]})
            member_adds.append(time.perf_counter() - started)
        return adds
    finally:
        conn.unbind()


def _small_group(info: Any, next_to: str) -> str:
    """A group of its own in the container of ``next_to`` (one of the joiners' groups), created empty; its DN."""
    from ldap3.core.exceptions import LDAPEntryAlreadyExistsResult  # type: ignore[import-untyped]

    dn = f"CN=Latency Member Probe,{next_to.split(',', 1)[1]}"
    conn = admin_connection(info)
    try:
        try:
            conn.add(dn, ["top", "group"], {"sAMAccountName": "latency-member-probe"})
        except LDAPEntryAlreadyExistsResult:
            pass
        return dn
    finally:
        conn.unbind()


def _count_entries(conn: Any, base_dn: str, search_filter: str) -> int:
    """How many entries under ``base_dn`` match ``search_filter`` (a paged search returning no attributes)."""
    import ldap3

    entries = conn.extend.standard.paged_search(
        base_dn, search_filter, ldap3.SUBTREE, attributes=["1.1"], paged_size=1000, generator=True
    )
    return sum(1 for entry in entries if entry.get("type") == "searchResEntry")


def _member_count(info: Any, group: str) -> int:
    """How many accounts are members of ``group`` (by memberOf)."""
    from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]

    conn = admin_connection(info)
    try:
        return _count_entries(conn, info.base_dn, f"(memberOf={escape_filter_chars(group)})")
    finally:
        conn.unbind()


def _histogram(path: Path, runs: dict[str, list[float]], floor_ms: float, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    every = [v * 1000 for values in runs.values() for v in values]
    top = max(percentile(every, 99.5), floor_ms * GOAL_FACTOR) * 1.1
    bins = [top * i / 60 for i in range(61)]
    colours = ["#2b6cb0", "#805ad5", "#dd6b20", "#38a169"]
    for (label, values), colour in zip(runs.items(), colours, strict=False):
        ms = [v * 1000 for v in values]
        p95 = percentile(ms, 95)
        ax.hist(
            [min(v, top) for v in ms],
            bins=bins,
            alpha=0.55,
            color=colour,
            label=f"{label}: p50 {percentile(ms, 50):.0f} ms, p95 {p95:.0f} ms, p99 {percentile(ms, 99):.0f} ms",
        )
        ax.axvline(p95, color=colour, linestyle=":", linewidth=1.2)
    ax.axvline(floor_ms, color="black", linewidth=1.2, label=f"floor: one raw add with password ({floor_ms:.1f} ms)")
    ax.axvline(
        floor_ms * GOAL_FACTOR,
        color="#c53030",
        linestyle="--",
        linewidth=1.2,
        label=f"goal (sequential): p95 ≤ {GOAL_FACTOR:.0f}× floor",
    )
    ax.set_xlabel("HTTP request -> change done in AD (ms; dotted: p95 of each run; last bin holds the tail)")
    ax.set_ylabel("joiners")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(ctx: Context) -> Result:
    from lifecycle.local.server import LocalHost
    from lifecycle.runtime import Runtime

    info = ctx.dc()
    count = ctx.size(500, 40)
    floor_count = ctx.size(60, 15)
    runtime = Runtime(dc_settings(info, ctx.tmp("latency"), worker_concurrency=CONCURRENCY))
    ids = iter(range(3_000_000, 4_000_000))
    host = LocalHost(runtime, host="127.0.0.1", port=0, workers=CONCURRENCY)
    completions = _Completions()
    process = host.worker.process_message

    queue_waits: list[float] = []

    def recording(message: Any) -> Any:
        queue_waits.append(time.time() - message.enqueued_at.timestamp())
        result = process(message)
        completions.record(message.message_id, result.outcome)
        return result

    host.worker.process_message = recording  # type: ignore[method-assign]
    floors: list[float] = []
    # Member adds timed by raw ldap3 in the sequential run (into the joiners' 3 groups, which grow by every
    # joiner of every benchmark on this DC) and into a group of few members after each floor add.
    raw_member_adds: list[float] = []
    small_group_adds: list[float] = []
    runs: dict[str, list[float]] = {}
    verified: dict[str, int] = {}
    samba_busy: dict[str, float] = {}
    try:
        host.start()
        warm = [halo_user(next(ids)) for _ in range(CONCURRENCY)]
        _run_load(host.url, completions, warm, CONCURRENCY)
        joined = raw_joiner(warm[0], runtime.mapping, info.base_dn).groups
        small = (_small_group(info, joined[0]), small_group_adds)
        floors += _floor(info, runtime.mapping, ids, floor_count // 2, small)
        sequential, concurrent, raw_label = (
            "sequential",
            f"{CONCURRENCY} concurrent",
            f"raw ldap3, {CONCURRENCY} concurrent",
        )
        raw_sequential = "raw ldap3, sequential"
        busy_seconds: dict[str, list[float]] = {}

        def timed_run(label: str, fn: Callable[[], list[float]]) -> None:
            cpu, started = _cpu_seconds(ctx.samba_pid()), time.perf_counter()
            runs.setdefault(label, []).extend(fn())
            spent = busy_seconds.setdefault(label, [0.0, 0.0])
            spent[0] += _cpu_seconds(ctx.samba_pid()) - cpu
            spent[1] += time.perf_counter() - started

        users = [halo_user(next(ids)) for _ in range(count)]
        raw_users = [halo_user(next(ids)) for _ in range(count)]
        chunks = ctx.size(5, 1)
        members_before = [_member_count(info, group) for group in joined]
        # Ours and raw ldap3 sending the same writes, one joiner at a time, in alternating chunks.
        for index in range(chunks):
            mine, theirs = users[index::chunks], raw_users[index::chunks]
            order = [
                (sequential, lambda m=mine: _run_load(host.url, completions, m, 1)),
                (
                    raw_sequential,
                    lambda t=theirs: _raw_concurrent(info, runtime.mapping, t, 1, raw_member_adds),
                ),
            ]
            for label, fn in order if index % 2 == 0 else reversed(order):
                timed_run(label, fn)
        members_after = [_member_count(info, group) for group in joined]
        verified[sequential] = _verify(info, users)
        floors += _floor(info, runtime.mapping, ids, floor_count // 4, small)
        # Ours and raw ldap3 at the same concurrency in alternating chunks, so load from elsewhere on the
        # machine falls on both alike.
        users = [halo_user(next(ids)) for _ in range(count)]
        raw_users = [halo_user(next(ids)) for _ in range(count)]
        for index in range(chunks):
            mine, theirs = users[index::chunks], raw_users[index::chunks]
            order = [
                (concurrent, lambda m=mine: _run_load(host.url, completions, m, CONCURRENCY)),
                (raw_label, lambda t=theirs: _raw_concurrent(info, runtime.mapping, t, CONCURRENCY)),
            ]
            for label, fn in order if index % 2 == 0 else reversed(order):
                timed_run(label, fn)
        verified[concurrent] = _verify(info, users)
        samba_busy.update({label: cpu / wall for label, (cpu, wall) in busy_seconds.items()})
        floors += _floor(info, runtime.mapping, ids, floor_count - len(floors), small)
        indexed, unindexed, accounts = _anchor_lookups(info, users[len(users) // 2]["id"], ctx.size(21, 5))
    finally:
        host.stop()
        runtime.close()

    floor_ms = median(floors) * 1000
    image = _histogram(
        ctx.image_dir / "latency-histogram.png",
        runs,
        floor_ms,
        f"End-to-end latency of {count} joiners per run (HTTP -> AD: create with password, enable, 3 groups)",
    )
    concurrent_p95 = percentile([v * 1000 for v in runs[concurrent]], 95)
    raw_p95 = percentile([v * 1000 for v in runs[raw_label]], 95)
    sequential_p95 = percentile([v * 1000 for v in runs[sequential]], 95)
    raw_sequential_p95 = percentile([v * 1000 for v in runs[raw_sequential]], 95)
    ours_mean = {label: sum(values) / len(values) * 1000 for label, values in runs.items()}
    sequential_why = (
        f"the p95 is {sequential_p95:.0f} ms against one raw add's {floor_ms:.1f} ms; a joiner is more than that "
        "add: it also joins 3 groups (a round trip to the DC each), and raw ldap3 sending just those writes one "
        f"joiner at a time reaches a p95 of {raw_sequential_p95:.0f} ms ({raw_sequential_p95 / floor_ms:.1f}× the "
        f"floor; ours is {sequential_p95 / raw_sequential_p95:.2f}× that). Ours adds the read before the add "
        "(the account by its anchor, its names free), the HTTP request, the queue and the journal and audit "
        f"commits (mean {ours_mean[sequential]:.0f} ms per joiner, raw {ours_mean[raw_sequential]:.0f} ms). "
        "The member adds are not a constant of LDAP: Samba keeps a group's members in the group's one record, and "
        "its member add slows as the group grows (measured apart on a fresh DC: median 4.3 ms at 10 members, 7.5 ms "
        "at 1,000, 14.9 ms at 3,000); "
        f"here the 3 groups every joiner of this run's benchmarks joins held {min(members_before):,} to "
        f"{max(members_after):,} members during the sequential run, where raw ldap3's member add took a median "
        f"{median(raw_member_adds) * 1000:.1f} ms against {median(small_group_adds) * 1000:.1f} ms into a group of "
        f"at most {len(small_group_adds)} members on the same DC (the floor's accounts): the joiner's own writes "
        "grow with the size of the groups it joins, the floor (one add) does not."
    )
    raw_why = (
        f"the p95 is {concurrent_p95:.0f} ms against raw ldap3's {raw_p95:.0f} ms at the same concurrency: the "
        "worker's read before the add (idempotency) queues at the single-threaded DC with the other joiners' "
        "operations, and the raw baseline sends only the writes."
    )
    rows = []
    for label, values in runs.items():
        if label.startswith("raw"):
            continue
        ms = [v * 1000 for v in values]
        judged = label == sequential
        for pct in (50, 95, 99):
            goal_row = judged and pct == 95
            rows.append(
                Row(
                    f"Latency HTTP -> AD, {label}, p{pct}",
                    percentile(ms, pct),
                    floor_ms,
                    "ms",
                    "one raw add with password + enable (median)",
                    f"≤ {GOAL_FACTOR:.0f}" if goal_row else "(reported)",
                    at_most=GOAL_FACTOR if goal_row else None,
                    note=f"{verified[label]}/{count} accounts verified in AD with their 3 groups" if pct == 50 else "",
                    missed_because=sequential_why if goal_row else "",
                )
            )
    rows.append(
        Row(
            f"Anchor look-up (employeeID, indexed) at {accounts:,} accounts",
            indexed * 1000,
            unindexed * 1000,
            "ms",
            "same search, unindexed attribute",
            "(reported)",
            digits=2,
        )
    )
    # The bound under the sequential goal, measured in the same run: raw ldap3 sending a joiner's writes, with
    # none of our code, against the same floor as ours.
    rows.append(
        Row(
            "Latency, sequential, p95 of raw ldap3 sending a joiner's writes (none of our code)",
            raw_sequential_p95,
            floor_ms,
            "ms",
            "one raw add with password + enable (median)",
            "(reported)",
            note=f"1 add and 3 member adds; the groups held {min(members_before):,} to {max(members_after):,} members",
        )
    )
    rows.append(
        Row(
            "Latency, sequential, p95, against raw ldap3 sending the same writes one joiner at a time",
            sequential_p95,
            raw_sequential_p95,
            "ms",
            "raw ldap3 joiners, one at a time (p95)",
            "(reported)",
        )
    )
    rows.append(
        Row(
            f"Latency, {concurrent}, p95, against raw ldap3 at the same concurrency",
            concurrent_p95,
            raw_p95,
            "ms",
            f"raw ldap3 joiners, {CONCURRENCY} threads (p95)",
            f"≤ {RAW_GOAL}",
            at_most=RAW_GOAL,
            missed_because=raw_why,
        )
    )
    anchor_note = (
        "Every event finds its account by the anchor (`employeeID`), and neither Windows AD nor Samba indexes "
        "`employeeID` by default (its `searchFlags` is 0), so each look-up scans every user object: here "
        f"{unindexed * 1000:.1f} ms at {accounts:,} accounts against {indexed * 1000:.2f} ms indexed, and it grows "
        "with the directory, on every event. The benchmark's DC indexes the anchor (`benchmarks/common.py: "
        "index_attribute`), as a deployment should: set the fATTINDEX flag (value 1) in the anchor attribute's "
        '`searchFlags` in the schema (Windows: the Schema snap-in\'s "Index this attribute").'
    )
    waits_ms = [w * 1000 for w in queue_waits[CONCURRENCY:]]
    wake_note = (
        f"From enqueue to a worker holding the message: median {percentile(waits_ms, 50):.1f} ms, p95 "
        f"{percentile(waits_ms, 95):.1f} ms over both runs. The workers block on the embedded queue's condition "
        "and wake when the ingress enqueues; a worker polling on a timer would add half its interval on average."
    )
    busy = ", ".join(f"{label} {share:.0%}" for label, share in samba_busy.items())
    details = [
        f"Method: {count} joiners per run through `LocalHost` ({CONCURRENCY} worker threads, HTTP on 127.0.0.1), "
        f"first one request at a time, then {CONCURRENCY} clients each keeping one request in flight (closed loop), "
        "each in chunks alternating with raw ldap3 sending the same writes for as many joiners at the same "
        "concurrency. "
        f"Floor: median of {len(floors)} raw adds with password and enabled flag, measured before and between the "
        "runs. Both the DC and the service share the machine's 2 cores; Samba serves LDAP in one process.",
        f"Samba's CPU use during each run (one core = 100%): {busy}. Samba here serves LDAP from one "
        f"single-threaded process (`-M single`), so it handles one operation at a time: with {CONCURRENCY} joiners "
        "in flight each waits for the others' operations, above all their password adds (key derivation), and its "
        "latency is about the DC's service time times the requests ahead of it. "
        f"The raw-ldap3 run at the same concurrency shows the same queueing with none of our code in the way.",
        wake_note,
        anchor_note,
        f"![Latency histogram]({{img}}/{image.name})",
    ]
    details.insert(
        -1,
        f"**Where the bound is.** The domain controller. At {CONCURRENCY} concurrent joiners the p95 is "
        f"{concurrent_p95:.0f} ms, {concurrent_p95 / floor_ms:.1f}× the floor; raw ldap3 doing the same "
        f"operations at the same concurrency, with none of our code, reaches {raw_p95:.0f} ms "
        f"({raw_p95 / floor_ms:.1f}× the floor), so ours is judged against that ({concurrent_p95 / raw_p95:.2f}×, "
        f"goal ≤ {RAW_GOAL}). The floor is the time of one password add on an idle DC; with {CONCURRENCY} in "
        "flight each joiner also waits for the adds ahead of it, because this DC does them one at a time. "
        f"Sequentially (an idle DC) the p95 is {sequential_p95:.0f} ms, {sequential_p95 / floor_ms:.1f}× the "
        f"floor (goal ≤ {GOAL_FACTOR:.0f}×). A DC that serves LDAP on several cores (Windows AD does) moves "
        "the concurrent bound; the service already runs one worker thread per concurrent session.",
    )
    data = {
        "latencies_s": runs,
        "floor_s": floors,
        "verified": verified,
        "samba_cpu_share": samba_busy,
        "anchor_lookup_s": {"indexed": indexed, "unindexed": unindexed, "accounts": accounts},
        "queue_wait_s": queue_waits,
        "member_add_s": {"joiners_groups_raw_sequential": raw_member_adds, "small_group": small_group_adds},
        "group_members": {"before_sequential": members_before, "after_sequential": members_after},
    }
    return Result(KEY, TITLE, rows=rows, details=details, images=[image], data=data)
