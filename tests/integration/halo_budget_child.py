"""A separate process using the Halo API with the service's settings (tests/integration/test_halo_shared_budget.py).

``python -m tests.integration.halo_budget_child CONFIG.json``: builds the runtime from the settings in the file
(the same store as its siblings) and fetches the users named there, one request each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lifecycle.runtime import Runtime
from lifecycle.settings import Settings


def main(path: str) -> int:
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    runtime = Runtime(Settings(**config["settings"]))
    try:
        client = runtime.halo
        assert client is not None
        for user_id in config["users"]:
            assert client.fetch_user(int(user_id)) is not None
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
