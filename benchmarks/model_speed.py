"""`xentaudit check --model --inputs` against `model.predict` plus `check` of the dumped logits.

Target (issue "auditing a saved model"): on 100,000 rows of a small model, `check --model m.keras
--inputs X.npy --labels y.npy` (a) takes at most 1.2x the time of the two-step route it replaces
(b): a Python step that loads the model, runs `model.predict(X, batch_size=1024)` on a sub-model
ending at the final Softmax's input (the logits xentaudit audits) and saves them with
`np.savez`, then `xentaudit check logits.npz --labels y.npy --model m.keras`.

The model (Input(F) -> Dense(H, relu) -> Dense(C) -> Softmax, compiled with
CategoricalCrossentropy(from_logits=False), untrained; --policy mixed_float16 builds it under
that global policy), the float32 inputs X.npy and integer labels y.npy are written to a
temporary folder. Every step runs as a fresh process, so each side pays its own Python,
TensorFlow and Keras imports and model load the same way; (b) is the sum of its two processes.
Both sides get the same --impl/--mode (default: check's own, every implementation but
double_softmax, both modes). One warm-up of each side is discarded, then --runs repetitions are
interleaved (a, b, a, b, ...) so both see the same machine state; medians are compared. A bare
`python -c "import keras"` is timed in the same rounds: (b) pays it twice, (a) once, so the ratio
with one import taken off (b) is printed too, for information. Peak RSS is each process's own
(os.wait4). The first lines name the CPU, the reference kernel's instruction-set clone and what
the frameworks were held to; --isa forces a clone and holds numpy, XLA and ATen to its
instruction set (benchmarks/machine.py).

    python benchmarks/model_speed.py [--runs 3] [--rows 100000] [--policy mixed_float16]
                                     [--impl NAME ...] [--mode both] [--isa x86-64-v3]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import benchmark_parser, parsed

GOAL = 1.2

BUILD = """
import sys
import keras
import numpy as np

folder, policy = sys.argv[1], sys.argv[2]
rows, features, hidden, classes = map(int, sys.argv[3:7])
keras.mixed_precision.set_global_policy(policy)
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((features,)),
    keras.layers.Dense(hidden, activation="relu"),
    keras.layers.Dense(classes),
    keras.layers.Softmax(),
])
model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=False))
model.save(f"{folder}/m.keras")
rng = np.random.default_rng(0)
np.save(f"{folder}/X.npy", rng.standard_normal((rows, features), dtype=np.float32))
np.save(f"{folder}/y.npy", rng.integers(0, classes, rows))
"""

# The baseline's first step: what a user writes to dump the logits (the Softmax layer's input,
# as xentaudit.model.logits_model takes it), with Keras' own batched predict.
PREDICT = """
import sys
import keras
import numpy as np

folder = sys.argv[1]
model = keras.saving.load_model(f"{folder}/m.keras", safe_mode=True, compile=False)
logits = keras.Model(model.inputs[0], model.layers[-1].input)
x = np.load(f"{folder}/X.npy", mmap_mode="r")
np.savez(f"{folder}/logits.npz", logits=logits.predict(x, batch_size=1024, verbose=0))
"""


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MiB) of one process; it must exit 0 or 1 (a verdict)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if code not in (0, 1):
        sys.exit(f"{' '.join(cmd)} exited {code}:\n{err.decode(errors='replace')}")
    return wall, usage.ru_maxrss / 1024  # KiB -> MiB


def main() -> None:
    parser = benchmark_parser(__doc__, runs=3)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--policy", choices=["float32", "mixed_float16"], default="float32")
    parser.add_argument("--impl", action="append", default=[], help="repeatable; both sides")
    parser.add_argument("--mode", choices=["eager", "graph", "both"], default="both")
    args = parsed(parser)

    # Quiet TensorFlow's C++ start-up lines in every child (the CLI sets this itself when unset).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    py = sys.executable
    options = [f"--impl={name}" for name in args.impl] + [f"--mode={args.mode}"]
    with tempfile.TemporaryDirectory() as folder:
        sizes = [str(n) for n in (args.rows, args.features, args.hidden, args.classes)]
        run([py, "-c", BUILD, folder, args.policy, *sizes])  # its stderr shown only on failure
        m, x, y = (f"{folder}/{name}" for name in ("m.keras", "X.npy", "y.npy"))
        direct = [py, "-m", "xentaudit", "check", "--model", m, "--inputs", x, "--labels", y]
        predict = [py, "-c", PREDICT, folder]
        dumped = [py, "-m", "xentaudit", "check", f"{folder}/logits.npz", "--labels", y]
        dumped += ["--model", m]

        a, b, b1, b2, rss_a, rss_b, imports = [], [], [], [], [], [], []
        for i in range(args.runs + 1):  # run 0 is the warm-up (file cache, .pyc), discarded
            wall_a, peak_a = run(direct + options)
            wall_p, peak_p = run(predict)
            wall_c, peak_c = run(dumped + options)
            wall_i, _ = run([py, "-c", "import keras"])
            if i:
                imports.append(wall_i)
                a.append(wall_a)
                rss_a.append(peak_a)
                b1.append(wall_p)
                b2.append(wall_c)
                b.append(wall_p + wall_c)
                rss_b.append(max(peak_p, peak_c))
        logits_mb = Path(f"{folder}/logits.npz").stat().st_size / 1e6
        inputs_mb = Path(x).stat().st_size / 1e6

    med_a, med_b = statistics.median(a), statistics.median(b)
    ratio = med_a / med_b
    print(
        f"model: Input({args.features}) -> Dense({args.hidden}, relu) -> Dense({args.classes}) "
        f"-> Softmax, CategoricalCrossentropy(from_logits=False), policy {args.policy}"
    )
    print(
        f"rows: {args.rows}; X.npy {inputs_mb:.1f} MB float32, dumped logits {logits_mb:.1f} MB; "
        f"options on both sides: {' '.join(options)}"
        f"{'' if args.impl else ' (every implementation but double_softmax)'}"
    )
    print(f"fresh processes, medians of {args.runs} after one warm-up:")
    print(f"  (a) check --model --inputs:            {med_a:6.2f} s  (all: {_fmt(a)})")
    print(f"  (b) predict + savez, then check FILE:  {med_b:6.2f} s  (all: {_fmt(b)})")
    print(f"      predict + savez:                   {statistics.median(b1):6.2f} s")
    print(f"      check logits.npz --model:          {statistics.median(b2):6.2f} s")
    imp = statistics.median(imports)
    print(
        f"      python -c 'import keras':          {imp:6.2f} s  (paid once by (a), twice by (b))"
    )
    print(
        f"  peak RSS, largest over the runs: (a) {max(rss_a):.0f} MiB; (b) {max(rss_b):.0f} MiB "
        "(the larger of its two processes)"
    )
    print(
        f"(a) / (b) = {ratio:.2f}x (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'}); "
        f"(a) - (b) = {med_a - med_b:+.2f} s"
    )
    print(
        f"(a) / ((b) - one import) = {med_a / (med_b - imp):.2f}x (for information: as if the "
        "two steps shared one process)"
    )


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
