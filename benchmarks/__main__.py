"""``python -m benchmarks [--quick]``: run every benchmark and write the report (what ``make bench`` runs).

Full mode writes ``docs/benchmarks.md`` and ``docs/img/latency-histogram.png``; ``--quick`` runs the same code on
small samples (CI's smoke test) and writes under ``benchmarks/results/`` instead, so it never replaces the
published figures. Raw figures go to ``benchmarks/results/results[-quick].json``. Exits 1 if a benchmark failed
(a benchmark whose subject is not built yet is reported as not measured, which is not a failure).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import ROOT, Context, Result, machine
from benchmarks.report import write_json, write_markdown

# Each module: KEY, TITLE, run(ctx) -> Result. Order is the numbering.
MODULES = (
    "benchmarks.ingress",
    "benchmarks.cold_start",
    "benchmarks.worker_throughput",
    "benchmarks.latency",
    "benchmarks.graph_leaver",
    "benchmarks.reconcile",
    "benchmarks.console",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples (CI smoke test, under 2 minutes)")
    parser.add_argument("--only", default="", help="comma-separated keys to run (e.g. ingress,latency)")
    parser.add_argument("--out", type=Path, help="the Markdown report (default: docs/benchmarks.md, quick: results/)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (DC, queues) for a look")
    return parser


def _run_one(name: str, ctx: Context) -> Result:
    module = importlib.import_module(name)
    started = time.perf_counter()
    print(f"== {module.TITLE} ...", flush=True)
    try:
        result: Result = module.run(ctx)
    except Exception as exc:
        traceback.print_exc()
        result = Result.failed(module.KEY, module.TITLE, f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - started
    if result.status == "measured":
        for row in result.rows:
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
            verdict = {True: "met", False: "MISSED", None: ""}[row.met]
            ours = f"{row.ours:,.1f}" if row.ours is not None else "-"
            print(f"   {row.metric}: {ours} {row.unit}, ratio {ratio} {verdict}", flush=True)
    else:
        print(f"   {result.status.replace('_', ' ')}: {result.reason}", flush=True)
    print(f"   ({result.seconds:.1f} s)", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results_dir = ROOT / "benchmarks" / "results"
    if args.quick:
        out = args.out or results_dir / "benchmarks-quick.md"
        image_dir = out.parent / "img"
    else:
        out = args.out or ROOT / "docs" / "benchmarks.md"
        image_dir = out.parent / "img"
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    scratch = Path(tempfile.mkdtemp(prefix="halo-bench-"))
    ctx = Context(quick=args.quick, scratch=scratch, image_dir=image_dir)
    info = machine()
    results: list[Result] = []
    started = time.perf_counter()
    try:
        for number, name in enumerate(MODULES, start=1):
            if only and name.rsplit(".", 1)[1] not in only:
                continue
            result = _run_one(name, ctx)
            result.number = number
            results.append(result)
    finally:
        ctx.close()
        if args.keep:
            print(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    info["load"] = f"{info['load']} at the start, {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end"
    command = "make bench-quick" if args.quick else "make bench"
    write_markdown(out, results, info, quick=args.quick, image_dir=image_dir, command=command)
    write_json(results_dir / ("results-quick.json" if args.quick else "results.json"), results, info, quick=args.quick)
    print(
        f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} in {time.perf_counter() - started:.0f} s"
    )
    failed = [r for r in results if r.status == "failed"]
    for result in failed:
        print(f"FAILED: {result.title}: {result.reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
