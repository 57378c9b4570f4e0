"""5. Microsoft Graph requests per leaver: licences, sessions, auto-reply and 10 cloud groups, against the stand-in.

The leaver runs through the worker and the real msgraph-sdk and msal, over HTTPS on 127.0.0.1, against the
Graph/Entra stand-in (``tests/standins/graph/``), with the cloud-only test mapping
(``tests/events/mapping-m365-cloud.toml``: auto-reply, revoke sessions, leave every cloud group, drop the
licences but the one holding the mailbox, disable Teams, disable the account, remove the photo). The person holds
two licences, a photo and 10 cloud groups. Ours: HTTP requests the stand-in received per leaver (a ``$batch``
counts once, token requests count too). Baseline: the Graph operations inside them, i.e. the requests a client
that does not batch would send. A first leaver warms the process (token, the tenant's SKU names) and is not
counted; its figure is reported separately. Until the Graph target and its stand-in exist the row says "not yet
measured": no number is ever shown that was not measured.
"""

from __future__ import annotations

import importlib.util
import time

from benchmarks.common import AUTH_HEADERS, ROOT, Context, Result, Row, base_settings, body, delivery, median

KEY = "graph_leaver"
TITLE = "Graph requests per leaver"
ISSUE = 5
NEEDS = ("tests.standins.graph", "lifecycle.targets.graph")
MAPPING = ROOT / "tests" / "events" / "mapping-m365-cloud.toml"
CLIENT_ID = "5f1d2c3b-0000-4000-8000-00000000be1c"
CLIENT_SECRET = "bench-graph-client-secret"  # noqa: S105 - the stand-in's throwaway client
GROUPS = 10


def missing() -> list[str]:
    """The modules this benchmark drives that do not exist yet."""
    absent = []
    for name in NEEDS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            absent.append(name)
    if not MAPPING.exists():
        absent.append(str(MAPPING.relative_to(ROOT)))
    return absent


def run(ctx: Context) -> Result:
    absent = missing()
    if absent:
        return Result.not_measured(KEY, TITLE, f"issue {ISSUE}: {', '.join(absent)} not built yet")

    from lifecycle.ingress import Ingress, Request
    from lifecycle.runtime import Runtime
    from lifecycle.targets.graph import close_clients
    from lifecycle.worker import Worker
    from tests.standins.graph import E3, VISIO, GraphStandIn

    leavers = ctx.size(20, 3)
    directory = ctx.tmp("graph")
    standin = GraphStandIn(directory).start()
    standin.clients[CLIENT_ID] = CLIENT_SECRET
    settings = base_settings(
        directory,
        mapping_file=MAPPING,
        graph_tenant_id=standin.tenant,
        graph_client_id=CLIENT_ID,
        graph_client_secret=CLIENT_SECRET,
        graph_authority_host=standin.url,
        graph_base_url=standin.graph_url,
        graph_ca_file=standin.ca_file,
    )
    runtime = Runtime(settings)
    ingress = Ingress(runtime)
    worker = Worker(runtime)

    def leaver(user_id: int) -> tuple[int, int, int, float]:
        """(HTTP requests, token requests, Graph operations, seconds) for one leaver."""
        upn = f"bench.leaver{user_id}@contoso.test"
        account = standin.add_user(upn, usage_location="GB", licenses={E3: [], VISIO: []}, photo=b"\xff\xd8old")
        for n in range(GROUPS):
            standin.add_group(f"Bench {user_id} team {n}").members.add(account.id)
        user = {
            "id": user_id,
            "name": f"Bench Leaver{user_id}",
            "firstname": "Bench",
            "surname": f"Leaver{user_id}",
            "emailaddress": upn,
            "inactive": True,
            "customfields": [{"name": "Manager", "value": "the service desk"}],
        }
        standin.clear_log()
        tokens = len(standin.token_requests)
        started = time.perf_counter()
        response = ingress.events(
            Request("POST", body(delivery("updated", user, f"bench-graph-{user_id}")), AUTH_HEADERS, {})
        )
        if response.status != 202:
            raise RuntimeError(f"ingress answered {response.status}: {response.body[:300]!r}")
        while (message := runtime.queue.receive(timeout=0)) is not None:
            result = worker.process_message(message)
            if result.outcome != "completed":
                raise RuntimeError(f"graph leaver: {result}")
        elapsed = time.perf_counter() - started
        if account.enabled or any(
            account.id in g.members for g in standin.groups.values() if g.name.startswith(f"Bench {user_id} ")
        ):
            raise RuntimeError("the leaver did not take effect in the stand-in")
        requests = len(standin.http_requests())
        operations = len([e for e in standin.log if e.path != "/$batch"])
        return requests, len(standin.token_requests) - tokens, operations, elapsed

    try:
        first = leaver(5_000_000)
        samples = [leaver(5_000_001 + i) for i in range(leavers)]
    finally:
        worker.close()
        runtime.close()
        close_clients()
        standin.stop()

    requests = median([float(r + t) for r, t, _, _ in samples])
    operations = median([float(o) for _, _, o, _ in samples])
    seconds = median([s for *_, s in samples])
    rows = [
        Row(
            f"Graph HTTP requests per leaver (licences, sessions, auto-reply, {GROUPS} groups, account, photo)",
            requests,
            operations,
            "requests",
            "Graph operations, one request each unbatched",
            "≤ 3 requests",
            ours_at_most=3,
            note=f"first leaver of the process (token, SKU names): {first[0] + first[1]} requests",
            missed_because=f"{requests:.0f} requests per leaver (median) for {operations:.0f} Graph operations.",
            digits=0,
        )
    ]
    details = [
        f"Method: {leavers} leavers after a first, uncounted one; medians. Each leaver takes {seconds * 1000:.0f} ms "
        "through the worker against the stand-in on loopback. The baseline is what the same calls would cost "
        "without JSON batching (`$batch`, up to 20 requests each, with `dependsOn` where order matters).",
    ]
    data = {"first": first, "samples": samples}
    return Result(KEY, TITLE, rows=rows, details=details, data=data)
