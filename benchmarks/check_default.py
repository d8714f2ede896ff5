"""A default `xentaudit check` (every implementation of the backends asked for, both modes) on
4096 x 32000 float32: its time against the frameworks' own forward+backward for the results it
reports, and its peak memory (issue "Speed on the CPUs CI runs on ...", target 3: at most 1.2x
that summed time, peak RSS under 1 GB whatever the number of implementations).

Measured in this run, in --runs rounds after one warm-up round, each round timing one after the
other (so that the machine's drift, large on a shared VM, moves them alike; the ratios are
taken within a round, and their median reported):
  - the baseline: for every result the check reports (implementation, mode, policy), the
    framework's forward and autodiff backward on the whole in-memory array, through the same
    adapter `check` calls (logits in, per-row losses and the gradient out as numpy), summed;
    timed just before and just after `check_file`, and the two averaged, so that a drift
    steady over the round cancels out of the ratio;
  - `check_file` in this process (the frameworks imported and traced by the warm-up), and
    within it the frameworks' own passes as it makes them: its runs of the implementations
    (``audit._run``, the adapter the baseline calls; a default check makes one per result
    and chunk, as the baseline does), less TensorFlow's copies of each chunk into tensors
    (``tf_zoo._tensors``: check's own work, which the baseline makes once, in the warm-up);
    timed in the same seconds as `check_file`, so that the machine's drift moves both. It
    splits wall time, not work: whatever slows those runs inside `check_file` (the order of
    its runs, the reader thread beside them, the caches its own work evicts) counts in
    them, and the rest is check's own work (the reference, the gradients' comparison,
    grading, the copies);
  - the same passes on the chunks `check` reads (``CHUNK_ENTRIES`` logits each, which the
    memory target sets), timed first and last in the round and averaged: what the frameworks'
    own runs cost at that size, apart from xentaudit's own work;
  - `xentaudit check` as a fresh process: wall time, and peak RSS: the largest process's
    (ru_maxrss of the children) and the whole process tree's, summed over its processes at
    each sample (every 50 ms, of /proc/*/status: the memory the machine must have at once;
    with several backends, `check` audits each in a process of its own, one at a time), beside
    a fresh process that only imports the frameworks.

TensorFlow's tensors come from its BFC pool in this process, as in the command line's
(``processes.as_command_line``), unless TF_CPU_ALLOCATOR_USE_BFC is set: `=false` measures malloc's.

    python benchmarks/check_default.py [--runs 3] [--backend tf] [--isa x86-64-v3]
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

from machine import benchmark_parser, parsed, saved_logits

ROWS, CLASSES = 4096, 32000
IMPORTS = {"tf": "tensorflow, keras", "torch": "torch", "jax": "jax, optax"}


def tree_rss(root: int) -> int:
    """The summed RSS (KiB) of process ``root`` and its descendants, from /proc."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:  # gone meanwhile
            continue
        parents[int(entry)] = int(fields["PPid"])
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, grown = {root}, True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    return sum(rss.get(pid, 0) for pid in tree)


def child(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS of the largest process and peak summed RSS of the process tree
    (MiB) of ``cmd`` run as a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # stderr to a file, not a pipe, which a chatty child could fill while this one samples
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
        summed = 0
        while process.poll() is None:
            summed = max(summed, tree_rss(process.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - start
        log.seek(0)
        stderr = log.read()
    if process.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd[:5])}... failed (exit {process.returncode}): {stderr[-500:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of the children is the largest child's: a run smaller than an earlier one
    # reads as that earlier peak; so the runs go from the smallest (imports only) up
    return wall, max(peak, before) / 1024, max(summed, peak) / 1024


def timing(fn: Callable, spent: dict[str, float], key: str) -> Callable:
    """``fn``, adding the seconds of each call to ``spent[key]``."""

    def timed(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start

    return timed


@contextlib.contextmanager
def frameworks_inside(backends: list[str]) -> Iterator[dict[str, float]]:
    """While the block runs, the seconds of every implementation's run (``audit._run``) in
    ``spent["runs"]``, and of TensorFlow's copies into tensors within them in
    ``spent["copies"]``."""
    spent = {"runs": 0.0, "copies": 0.0}
    targets = [(sys.modules["xentaudit.audit"], "_run", "runs")]
    if "tf" in backends:
        from xentaudit.impls import tf_zoo

        targets.append((tf_zoo, "_tensors", "copies"))
    with contextlib.ExitStack() as stack:
        for module, name, key in targets:
            wrapped = timing(getattr(module, name), spent, key)
            stack.enter_context(mock.patch.object(module, name, wrapped))
        yield spent


def main() -> None:
    parser = benchmark_parser(__doc__, runs=3)
    parser.add_argument("--backend", default="tf", help="tf, torch, jax or a comma list")
    args = parsed(parser)
    backends = args.backend.split(",")
    from xentaudit.processes import as_command_line

    as_command_line()  # TensorFlow's allocator (and logs) as `xentaudit check` has it, for all here
    pooled = os.environ["TF_CPU_ALLOCATOR_USE_BFC"].lower() in ("true", "1")
    print(f"TensorFlow's CPU tensors: {'its BFC pool' if pooled else 'malloc'} (in every process)")

    from xentaudit.audit import Batch, Rounded, _run, round_to
    from xentaudit.check import CHUNK_ENTRIES, check_file
    from xentaudit.dtypes import get_format

    with tempfile.TemporaryDirectory(dir=".") as folder:
        x, k, path = saved_logits(Path(folder), ROWS, CLASSES)
        imports = [sys.executable, "-c", "import " + ", ".join(IMPORTS[b] for b in backends)]
        cli = [
            sys.executable, "-m", "xentaudit", "check", str(path), "--backend", args.backend,
            "--format", "json", "--output", str(Path(folder) / "r.json"),
        ]  # fmt: skip
        import_wall, import_rss, _ = child(imports)
        cli_wall, cli_rss, cli_tree = child(cli)

        check = check_file(path, backends=backends)
        whole = round_to(Batch(x, None, k), get_format("float32"), method="float64")
        step = max(1, CHUNK_ENTRIES // CLASSES)
        chunks = [
            round_to(Batch(x[lo : lo + step], None, k[lo : lo + step]), whole.fmt, "float64")
            for lo in range(0, ROWS, step)
        ]

        def own(batches: list[Rounded], seconds: dict) -> float:
            """The summed seconds of every result's forward+backward over ``batches``, each
            result's also appended to ``seconds``."""
            total = 0.0
            for r in check.results:
                eps = 1e-7 if r.eps is None else r.eps
                start = time.perf_counter()
                for batch in batches:
                    _run(r.impl, eps, r.mode, batch, None, r.policy, 1.0)
                took = time.perf_counter() - start
                seconds.setdefault((r.impl, eps, r.mode, r.policy), []).append(took)
                total += took
            return total

        rounds: list[tuple[float, float, float, float, float]] = []
        per_result: dict = {}
        for i in range(args.runs + 1):  # round 0 warms up
            chunks_before = own(chunks, {})
            before = own([whole], per_result)
            with frameworks_inside(backends) as spent:
                start = time.perf_counter()
                check_file(path, backends=backends)
                took = time.perf_counter() - start
            after = own([whole], per_result)
            chunks_after = own(chunks, {})
            # each pass on both sides of check_file: a drift that is steady over the round
            # moves their mean as it moves check_file
            inside = spent["runs"] - spent["copies"]
            measured = (
                took,
                (before + after) / 2,
                (chunks_before + chunks_after) / 2,
                inside,
                spent["copies"],
            )
            if i:
                rounds.append(measured)
            else:
                per_result.clear()

    tool, summed, chunked, inside, copies = (
        statistics.median(r[i] for r in rounds) for i in range(5)
    )
    ratios = sorted(r[0] / r[1] for r in rounds)
    ratio = statistics.median(ratios)
    print(
        f"default check --backend {args.backend} of {ROWS} x {CLASSES} float32 "
        f"({x.nbytes / 1e6:.0f} MB, class labels): {len(check.results)} results; medians of "
        f"{args.runs} rounds"
    )
    print(f"  frameworks' own fwd+bwd on the whole array, summed over the results: {summed:.2f} s")
    medians = {key: statistics.median(v) for key, v in per_result.items()}
    for (impl, eps, mode, policy), seconds in sorted(medians.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    e.g. {impl} (eps {eps:g}) {mode} {policy}: {seconds:.2f} s")
    print(
        f"  the same on check's {len(chunks)} chunks of {step} rows: {chunked:.2f} s "
        f"({statistics.median(r[2] / r[1] for r in rounds):.2f}x the whole array's)"
    )
    print(
        f"  check_file in this process (warm): {tool:.2f} s; the median of the rounds' ratios to "
        f"the whole array's: {ratio:.2f}x (each round: {', '.join(f'{r:.2f}x' for r in ratios)}; "
        "target <= 1.2x: "
        f"{'met' if ratio <= 1.2 else 'NOT met'}), "
        f"and to the chunks': {statistics.median(r[0] / r[2] for r in rounds):.2f}x"
    )
    split = sorted(r[0] / r[3] for r in rounds)
    print(
        f"  within check_file: the frameworks' own passes {inside:.2f} s "
        f"({statistics.median(r[3] / r[2] for r in rounds):.2f}x the same passes on the chunks "
        f"timed alone), check's own work {statistics.median(r[0] - r[3] for r in rounds):.2f} s "
        f"(TensorFlow's copies of the chunks into tensors {copies:.2f} s of it); check_file / "
        f"the frameworks' passes within it: median {statistics.median(split):.2f}x (each "
        f"round: {', '.join(f'{r:.2f}x' for r in split)}; it leaves out how much slower the "
        "frameworks' passes run inside check_file, which the ratio to the whole array's "
        "above counts)"
    )
    print(
        f"  xentaudit check, fresh process: {cli_wall:.2f} s wall (importing the frameworks "
        f"alone: {import_wall:.2f} s); peak RSS {cli_rss:.0f} MiB in its largest process, "
        f"{cli_tree:.0f} MiB summed over its processes at once (the imports alone: "
        f"{import_rss:.0f} MiB; target < 1024 MiB: {'met' if cli_tree < 1024 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
