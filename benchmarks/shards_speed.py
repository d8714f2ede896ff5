"""`xentaudit check` of a sharded dump: throughput in 1 and 2 local processes and on a 2-worker
local Dask cluster (issue "Speed on the CPUs CI runs on, and dumps bigger than one machine").

Writes --shards .npy shards of standard-normal float32 logits (--rows x --classes in all, with
class labels; at two sizes) to a temporary folder, then times, as fresh processes (imports
included, as a user runs them), median of --runs after one warm-up:
  check 'folder/shard-*.npy' --labels ... --impl IMPL --mode eager            (one process)
  ... --jobs 2                                                                 (two processes)
  ... --scheduler ADDRESS    (a LocalCluster of 2 worker processes, started once, outside the
                              timing; each run's workers import the framework again only the
                              first time)
and prints GB/s of logits for each, the ratio to one process, and the marginal rate (the
difference in size over the difference in time between the two sizes: the rate once start-up
is paid, which a TB dump runs at). The arithmetic for a dump of --dump-tb terabytes on N
machines follows from the marginal rate of --jobs 2.

    python benchmarks/shards_speed.py [--runs 3] [--rows 4096 16384] [--impl tf_softmax_xent]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import benchmark_parser, parsed, wall


def write_shards(folder: Path, shards: int, rows: int, classes: int) -> float:
    """``shards`` shards of ``rows // shards`` rows each, and their labels; the logits' GB."""
    rng = np.random.default_rng(0)
    per = rows // shards
    (folder / "logits").mkdir()
    (folder / "labels").mkdir()
    for i in range(shards):
        np.save(
            folder / "logits" / f"shard-{i:05d}.npy",
            rng.standard_normal((per, classes), np.float32),
        )
        np.save(folder / "labels" / f"shard-{i:05d}.npy", rng.integers(0, classes, per))
    return shards * per * classes * 4 / 1e9


def median_wall(cmd: list[str], runs: int) -> float:
    wall(cmd)  # warm-up: page cache, compile caches, the cluster's first imports
    return statistics.median(wall(cmd) for _ in range(runs))


def main() -> None:
    parser = benchmark_parser(__doc__, runs=3)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rows", type=int, nargs=2, default=(4096, 16384))
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--impl", default="tf_softmax_xent")
    parser.add_argument("--dump-tb", type=float, default=1.0)
    args = parsed(parser)
    from distributed import LocalCluster

    ways = {"1 process": [], "--jobs 2": ["--jobs", "2"], "--scheduler": None}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    sizes = []
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        ways["--scheduler"] = ["--scheduler", cluster.scheduler_address]
        for rows in args.rows:
            with tempfile.TemporaryDirectory(dir=".") as tmp:
                folder = Path(tmp)
                sizes.append(write_shards(folder, args.shards, rows, args.classes))
                base = [
                    sys.executable, "-m", "xentaudit", "check",
                    str(folder / "logits" / "shard-*.npy"),
                    "--labels", str(folder / "labels" / "shard-*.npy"), "--impl", args.impl,
                    "--mode", "eager", "--format", "json", "--output", str(folder / "r.json"),
                ]  # fmt: skip
                for way, extra in ways.items():
                    seconds[way].append(median_wall([*base, *extra], args.runs))
    print(
        f"{args.shards} shards of float32 logits, {args.classes} classes, --impl {args.impl} "
        f"--mode eager; fresh `xentaudit check` processes (imports included), medians of "
        f"{args.runs}; the cluster (2 worker processes, 1 thread each) started once, outside "
        "the timing:"
    )
    small, big = sizes
    for way, (t_small, t_big) in seconds.items():
        marginal = (big - small) / (t_big - t_small)
        print(
            f"  {way:12s} {small:.2f} GB: {t_small:5.2f} s ({small / t_small:.3f} GB/s); "
            f"{big:.2f} GB: {t_big:5.2f} s ({big / t_big:.3f} GB/s, "
            f"{seconds['1 process'][1] / t_big:.2f}x one process); "
            f"marginal {marginal:.3f} GB/s"
        )
    rate = (big - small) / (seconds["--jobs 2"][1] - seconds["--jobs 2"][0])
    hours = args.dump_tb * 1000 / rate / 3600
    print(
        f"A {args.dump_tb:g} TB dump at the marginal rate of --jobs 2 ({rate:.3f} GB/s per 2-core "
        f"machine): {hours:.1f} h on 1 machine, {hours / 10 * 60:.0f} min on 10, "
        f"{hours / 100 * 60:.1f} min on 100, if the shared storage serves every machine at that "
        "rate."
    )


if __name__ == "__main__":
    main()
