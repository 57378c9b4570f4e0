"""What every benchmark module shares: the result type, the run context, timing helpers and the test directory.

A benchmark is a module with ``KEY``, ``TITLE`` and ``run(ctx: Context) -> Result``. It measures our figure and
its baseline *in the same run* (these machines are noisy), and reports rows of the results table. A module whose
subject does not exist yet returns ``Result.not_measured(...)``: the table says so, and never shows a number that
was not measured.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lifecycle.local.samba import DCInfo, SambaDC
    from lifecycle.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MAPPING_FILE = ROOT / "mapping.example.toml"
BASIC_USER = "halo"
BASIC_PASSWORD = "bench-basic-secret"  # noqa: S105 - a throwaway credential of the benchmark's own service
AUTH_HEADERS = {
    "Authorization": "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode(),
    "Content-Type": "application/json",
}
Status = Literal["measured", "not_measured", "failed"]


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    ``ratio`` is always ours ÷ baseline; the goal is a bound on it (``at_least`` or ``at_most``), so the same
    column reads the same way for throughputs and for times.
    """

    metric: str
    ours: float | None
    baseline: float | None
    unit: str
    baseline_label: str = ""
    goal: str = ""
    at_least: float | None = None
    at_most: float | None = None
    # A bound on ``ours`` itself, for goals stated as an absolute number (e.g. at most 3 requests).
    ours_at_most: float | None = None
    note: str = ""
    digits: int = 1
    # False where the baseline is a constant or derived from one (a counted minimum, Halo's published limit)
    # rather than measured in this run; the table marks such rows with † so no reader mistakes them.
    baseline_measured: bool = True
    # Why the goal is missed when it is (one sentence for the report's "Goals missed" list); the benchmark sets
    # it from what it measured, so the report never shows a ❌ without saying where the bound is.
    missed_because: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        if self.ours_at_most is not None:
            return None if self.ours is None else self.ours <= self.ours_at_most
        ratio = self.ratio
        if ratio is None or (self.at_least is None and self.at_most is None):
            return None
        return (self.at_least is None or ratio >= self.at_least) and (self.at_most is None or ratio <= self.at_most)


@dataclass
class Result:
    """What one benchmark module reports."""

    key: str
    title: str
    status: Status = "measured"
    rows: list[Row] = field(default_factory=list)
    # Markdown paragraphs for the document: method, breakdowns, where the bound is.
    details: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    number: int = 0  # the numbering of the measurement, set by the runner
    # Raw figures, kept in results.json for whoever wants to re-plot or compare runs.
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def not_measured(cls, key: str, title: str, reason: str) -> Result:
        return cls(key, title, status="not_measured", reason=reason)

    @classmethod
    def failed(cls, key: str, title: str, reason: str) -> Result:
        return cls(key, title, status="failed", reason=reason)


class Context:
    """One run of the suite: mode, scratch directory, where images go, and a DC shared by the AD benchmarks."""

    def __init__(self, *, quick: bool, scratch: Path, image_dir: Path) -> None:
        self.quick = quick
        self.scratch = scratch
        self.image_dir = image_dir
        self._dc: SambaDC | None = None
        self._directory_ready = False

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def tmp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch))
        return path

    def dc(self) -> DCInfo:
        """A throwaway Samba AD DC (started on first use) with the example mapping's OUs and groups."""
        from lifecycle.local.samba import SambaDC, free_loopback_address, samba_available

        if self._dc is None:
            if not samba_available():
                raise RuntimeError("samba is not installed (`make setup` installs it)")
            controller = SambaDC(
                self.scratch / "samba-dc",
                host=free_loopback_address(exclude=["127.0.0.1"]),
                max_runtime_seconds=3 * 3600,
            )
            controller.ensure_provisioned()
            controller.start()
            self._dc = controller
        info = self._dc.info
        if not self._directory_ready:
            from lifecycle.local.bootstrap import ensure_containers
            from lifecycle.mapping.schema import load_mapping
            from lifecycle.targets.ad import ADTarget

            mapping = load_mapping(MAPPING_FILE)
            target = ADTarget("default", dc_settings(info, self.tmp("bootstrap")).ad_connection("default"))
            try:
                ensure_containers(target, mapping)
            finally:
                target.close()
            index_attribute(info, mapping.anchor)
            self._directory_ready = True
        return info

    def samba_pid(self) -> int | None:
        return self._dc.pid if self._dc is not None else None

    def close(self) -> None:
        if self._dc is not None:
            self._dc.stop()
            self._dc = None


def base_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings of a benchmark's own service: the example mapping, Basic auth, an embedded queue and store."""
    from lifecycle.settings import Settings

    values: dict[str, Any] = {
        "mapping_file": MAPPING_FILE,
        "data_dir": data_dir / "data",
        "webhook_basic_user": BASIC_USER,
        "webhook_basic_password": BASIC_PASSWORD,
        "ad_base_dn": "DC=corp,DC=example,DC=test",
        "log_level": "WARNING",
        # Benchmarks create hundreds of accounts in a minute on purpose: the joiner guard would hold them.
        "guard_max_joiners": 0,
    }
    values.update(overrides)
    return Settings(**values)


def dc_settings(info: DCInfo, data_dir: Path, **overrides: Any) -> Settings:
    """Settings wired to the benchmark's DC (as tests/integration/conftest.py wires its tests)."""
    return base_settings(
        data_dir,
        ad_url=info.url,
        ad_user=info.admin_user,
        ad_password=info.admin_password,
        ad_ca_file=info.ca_file,
        ad_tls_server_name=info.tls_server_name,
        ad_base_dn=info.base_dn,
        **overrides,
    )


def admin_connection(info: DCInfo) -> Any:
    """One raw ldap3 LDAPS connection as Administrator: what the baselines use."""
    import ssl

    import ldap3  # type: ignore[import-untyped]

    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(info.ca_file), valid_names=[info.tls_server_name])
    server = ldap3.Server(info.host, port=636, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    return ldap3.Connection(server, info.admin_user, info.admin_password, auto_bind=True, raise_exceptions=True)


def index_attribute(info: DCInfo, name: str) -> bool:
    """Index ``name`` in the DC's schema (searchFlags bit fATTINDEX); True if it was not indexed before.

    The anchor is how every event finds its account, and neither Windows AD nor Samba indexes ``employeeID`` by
    default (its searchFlags is 0): unindexed, each look-up scans every user object. Production deployments index
    it (docs/benchmarks.md shows the difference); the benchmarks' DC does the same.
    """
    import ldap3  # type: ignore[import-untyped]

    conn = admin_connection(info)
    try:
        schema = f"CN=Schema,CN=Configuration,{info.base_dn}"
        conn.search(schema, f"(lDAPDisplayName={name})", ldap3.LEVEL, attributes=["searchFlags"])
        entry = next(e for e in conn.response if e.get("type") == "searchResEntry")
        value = entry["attributes"].get("searchFlags") or 0
        flags = int(value[0] if isinstance(value, list) else value)
        if flags & 1:
            return False
        conn.modify(entry["dn"], {"searchFlags": [(ldap3.MODIFY_REPLACE, [str(flags | 1)])]})
        # The rootDSE takes schemaUpdateNow only from a connection that does not check names against the schema.
        reload = ldap3.Connection(
            conn.server, info.admin_user, info.admin_password, auto_bind=True, raise_exceptions=True, check_names=False
        )
        try:
            reload.modify("", {"schemaUpdateNow": [(ldap3.MODIFY_ADD, ["1"])]})
        finally:
            reload.unbind()
        return True
    finally:
        conn.unbind()


# Halo users ----------------------------------------------------------------------------------------------------
SALES_GROUPS = ("All Staff", "Site Main", "Sales")


def halo_user(user_id: int, *, department: str = "Sales", **fields: Any) -> dict[str, Any]:
    """A Halo user at site Main in ``department``; under the example mapping Sales gives exactly 3 groups
    (All Staff, Site Main, Sales) and the OU ``OU=Main,OU=Staff,OU=Halo``."""
    first, last = f"Bench{user_id}", f"User{user_id}"
    return {
        "id": user_id,
        "name": f"{first} {last}",
        "firstname": first,
        "surname": last,
        "initials": "BU",
        "site_id": 18.0,
        "site_name": "Main",
        "client_id": 12,
        "client_name": "DemoDoftware",
        "department": department,
        "title": "Account Manager",
        "emailaddress": f"bench{user_id}@example.test",
        "phonenumber": "0123456789",
        "inactive": False,
        "isserviceaccount": False,
        "use": "user",
        **fields,
    }


def delivery(kind: str, user: dict[str, Any], delivery_id: str) -> dict[str, Any]:
    """A Halo webhook delivery of ``user`` (the shape of tests/events/webhook-user-created.json)."""
    names = {"created": "User Created", "updated": "User Updated", "deleted": "User Deleted"}
    return {
        "id": delivery_id,
        "webhook_id": "a1f0c7d4-0000-4000-8000-000000000001",
        "event": names[kind],
        "message": f"User {user['name']} was {kind}",
        "object_id": user["id"],
        "agent_id": 3,
        "timestamp": "2026-11-30T09:15:00",
        "user": user,
    }


def body(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


# Timing --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Collect first, then keep the collector out of a timed loop (as timeit does)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def interleaved(runs: Sequence[tuple[str, Callable[[int], float]]], rounds: int) -> dict[str, list[float]]:
    """Run each ``(name, fn)`` once per round, alternating which goes first, and collect what each returns.

    Alternating in the same process spreads the machine's noise over both sides instead of over one.
    """
    out: dict[str, list[float]] = {name: [] for name, _ in runs}
    for index in range(rounds):
        order = runs if index % 2 == 0 else list(reversed(runs))
        for name, fn in order:
            out[name].append(fn(index))
    return out


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank on the sorted values, as latency reports use)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# Machine -------------------------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    """What the figures were measured on (goes in every row of the table)."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    samba = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        samba = subprocess.run(
            ["samba", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    code = os.environ.get("BENCH_CODE_VERSION", "")
    if not code:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            git = ["git", "-C", str(ROOT)]
            sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
            dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True)
            code = sha.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")
    return {
        "code": code or "unknown",
        "cores": str(os.cpu_count() or 0),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "os": platform.platform(terse=True),
        "samba": samba.replace("Version ", "Samba "),
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def machine_label(info: dict[str, str]) -> str:
    return f"{info['cores']} cores {info['cpu']}, Python {info['python']}"


def now() -> float:
    return time.perf_counter()
