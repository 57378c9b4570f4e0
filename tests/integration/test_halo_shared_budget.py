"""Two processes sharing Halo's budget through the store never use more than their share of it together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.standins.halo import HaloStandIn, UserSet

# Halo's limit in the stand-in (per rolling window), and the share the service may use of it.
HALO_LIMIT, WINDOW, SHARE = 20, 1.0, 0.5


def test_two_processes_sharing_the_budget_never_exceed_the_share_in_any_window(tmp_path: Path) -> None:
    standin = HaloStandIn(UserSet(100, first_id=1), rate_limit=HALO_LIMIT, rate_window=WINDOW).start()
    try:
        settings = {
            "mapping_file": str(ROOT / "mapping.example.toml"),
            "data_dir": str(tmp_path / "shared-data"),  # one embedded store for both, as one Table in Azure
            "halo_api_url": standin.url,
            "halo_client_id": standin.client_id,
            "halo_client_secret": standin.client_secret,
            "halo_ca_file": str(standin.ca_file),
            "halo_rate_limit": HALO_LIMIT,
            "halo_rate_limit_window_seconds": WINDOW,
            "halo_rate_share": SHARE,
        }
        children = []
        for index in range(2):
            config = tmp_path / f"child-{index}.json"
            users = list(range(1 + index * 30, 31 + index * 30))
            config.write_text(json.dumps({"settings": settings, "users": users}), encoding="utf-8")
            argv = [sys.executable, "-m", "tests.integration.halo_budget_child", str(config)]
            children.append(subprocess.Popen(argv, cwd=ROOT))
        for child in children:
            assert child.wait(timeout=120) == 0
        assert standin.routes["GET /api/Users/{id}"] == 60
        share = int(HALO_LIMIT * SHARE)
        # Halo never saw more than the share in any rolling window, so it never had to refuse a request...
        assert standin.max_in_window <= share and standin.rate_limited == 0
        # ...and the share was reached: the two processes did wait for each other.
        assert standin.max_in_window == share
    finally:
        standin.stop()
