"""6. Reconcile 100,000 stand-in Halo users: time, peak RSS and requests, against the rate limit's floor.

The measurement itself lives in ``benchmarks/reconcile_memory.py`` (written with the reconcile feature, against
the Halo stand-in ``tests/standins/halo.py``); this module plugs it into the runner. Its contract is the runner's:
``run(ctx: Context) -> Result`` with rows for time (baseline: requests ÷ the allowed request rate), peak RSS and
requests made. Until it exists the row says "not yet measured": no number is ever shown that was not measured.
"""

from __future__ import annotations

import importlib
import importlib.util

from benchmarks.common import Context, Result

KEY = "reconcile"
TITLE = "Reconcile 100,000 users"
ISSUE = 7
MEASUREMENT = "benchmarks.reconcile_memory"


def run(ctx: Context) -> Result:
    if importlib.util.find_spec(MEASUREMENT) is None:
        return Result.not_measured(KEY, TITLE, f"issue {ISSUE}: {MEASUREMENT} not built yet")
    module = importlib.import_module(MEASUREMENT)
    measure = getattr(module, "run", None)
    if not callable(measure):
        return Result.not_measured(
            KEY, TITLE, f"issue {ISSUE}: {MEASUREMENT} has no run(ctx) -> Result for the runner to call"
        )
    result: Result = measure(ctx)
    return result
