"""Run Nudge's benchmarks: `make bench`, or `python -m benchmarks.run [--quick] [--only N]`.

Each benchmark prints its figure, the baseline's figure measured in the same run on the same
machine, their ratio and the target. Benchmarks are not tests: the exit code says whether
they ran, never whether a target was met.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import alertmanager, burst, delivery, ingest, latency, replicas
from benchmarks.harness import ROOT, Result, machine_summary
from benchmarks.sizes import FULL, QUICK, TINY, Sizes

BENCHMARKS: dict[int, tuple[str, Callable[[int, Sizes, Path], Result]]] = {
    1: ("ingest, 1,000-alert payloads",
        lambda n, s, w: ingest.run(n, s, w, alerts_per_post=1000, target=0.5)),
    2: ("ingest, one alert per POST",
        lambda n, s, w: ingest.run(n, s, w, alerts_per_post=1, target=0.5, durable_target=0.8)),
    3: ("delivery throughput", delivery.run),
    4: ("delivery vs Alertmanager email_configs", alertmanager.run),
    5: ("latency, webhook 200 to SMTP accept", latency.run),
    6: ("burst of distinct users", burst.run),
    7: ("PostgreSQL: 1 replica vs 3, beside SQLite", replicas.run),
}


def parse_only(values: list[str] | None) -> list[int]:
    if not values:
        return sorted(BENCHMARKS)
    chosen = []
    for value in values:
        for part in value.split(","):
            number = int(part)
            if number not in BENCHMARKS:
                raise SystemExit(f"--only: no benchmark {number} (there are {sorted(BENCHMARKS)})")
            chosen.append(number)
    return sorted(set(chosen))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    size.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds each)")
    parser.add_argument("--only", action="append", metavar="N",
                        help="run only benchmark N (repeat or comma-separate for several)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where databases and logs go (default var/bench/<time>, removed "
                             "afterwards unless --keep or a benchmark failed)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    numbers = parse_only(args.only)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = (args.workdir or ROOT / "var" / "bench" / stamp).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    print(f"Nudge benchmarks ({sizes.name} sizes), {stamp}", flush=True)
    for line in machine_summary():
        print(line, flush=True)
    print("Figures are ratios against a baseline measured in the same run on the same machine; "
          "absolute numbers vary with the machine and its neighbours.\n", flush=True)

    results: list[Result] = []
    failed = False
    started = time.monotonic()
    for number in numbers:
        name, bench = BENCHMARKS[number]
        bench_dir = workdir / f"bench{number}"
        bench_dir.mkdir(exist_ok=True)
        began = time.monotonic()
        try:
            result = bench(number, sizes, bench_dir)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next benchmark
            failed = True
            traceback.print_exc()
            result = Result(number, name, skipped=f"FAILED: {type(exc).__name__}: {exc}")
            result.seconds = time.monotonic() - began
        results.append(result)
        print("\n".join(result.lines()) + "\n", flush=True)

    print(f"total {time.monotonic() - started:.0f}s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "sizes": sizes.name, "stamp": stamp, "machine": machine_summary(),
            "results": [r.as_dict() for r in results],
        }, indent=2))
    if failed or args.keep:
        print(f"work folder kept: {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
