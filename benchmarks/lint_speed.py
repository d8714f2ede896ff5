"""`xentaudit lint` on 10,000 lines of Python: the target is under 1 s, whole process included
(start-up, imports, parsing, rules, report), with no framework imported.

The code is generated: the four training scripts of tests/lint_corpus (Keras fit, a
GradientTape loop, a PyTorch loop, a flax/optax step) and functions in the style of training
utilities (data loading, metrics, schedules, losses, most of them stable), spread over files of
about 250 lines as a project would be. Each run is a fresh `python -m xentaudit lint` process;
the figure is the median of --runs runs after one warm-up (which fills the OS file cache).

    python benchmarks/lint_speed.py [--runs 7] [--lines 10000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "lint_corpus"
HEAVY = ("tensorflow", "keras", "torch", "jax", "optax", "flax", "libcst")
TARGET = 1.0  # seconds for 10,000 lines, issue "xentaudit lint"

UTILITIES = [
    '''
def load_batches_{n}(paths, batch_size={b}):
    """Yield (inputs, labels) batches from .npz shards."""
    for path in paths:
        with np.load(path) as shard:
            inputs, labels = shard["x"], shard["y"]
        for start in range(0, len(inputs), batch_size):
            yield inputs[start : start + batch_size], labels[start : start + batch_size]
''',
    """
def accuracy_{n}(logits, labels):
    probs = tf.nn.softmax(logits, axis=-1)
    predicted = tf.argmax(probs, axis=-1, output_type=labels.dtype)
    return tf.reduce_mean(tf.cast(predicted == labels, tf.float32))
""",
    """
def cosine_schedule_{n}(step, total={b}, base=1e-3, warmup=100):
    if step < warmup:
        return base * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * progress))
""",
    """
def stable_loss_{n}(logits, labels, smoothing=0.1):
    classes = logits.shape[-1]
    soft = labels * (1 - smoothing) + smoothing / classes
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(soft, logits))
""",
    """
def torch_metrics_{n}(logits, target):
    log_p = F.log_softmax(logits, dim=-1)
    nll = F.nll_loss(log_p, target, reduction="none")
    entropy = -(log_p.exp() * log_p).sum(-1)
    return {{"nll": nll.mean().item(), "entropy": entropy.mean().item()}}
""",
    """
def unstable_loss_{n}(logits, labels):
    p = tf.nn.softmax(logits)
    return -tf.reduce_sum(labels * tf.math.log(p + 1e-{b}), axis=-1)
""",
    """
class EarlyStopping{n}:
    def __init__(self, patience={b}, min_delta=0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.bad_epochs = float("inf"), 0

    def step(self, value):
        if value < self.best - self.min_delta:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs > self.patience
""",
]
HEADER = (
    "import math\n\nimport numpy as np\nimport tensorflow as tf\nimport torch\n"
    "import torch.nn.functional as F\n"
)


def generate(folder: Path, lines: int, seed: int = 0) -> int:
    """Write about ``lines`` lines of Python into ``folder``; the number written."""
    rng = random.Random(seed)
    scripts = [p.read_text() for p in sorted(CORPUS.glob("*.py"))]
    written, n = 0, 0
    while written < lines:
        parts = [scripts[n % len(scripts)], HEADER]
        while sum(p.count("\n") for p in parts) < 250:
            template = rng.choice(UTILITIES)
            parts.append(template.format(n=len(parts) + 1000 * n, b=rng.randint(2, 9)))
        text = "\n".join(parts)
        (folder / f"module_{n:03d}.py").write_text(text)
        written += text.count("\n")
        n += 1
    return written


def isa_flags() -> str:
    """Whether this CPU has AVX2 and AVX-512 (the flags of /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags: set[str] = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    has = {
        name: "yes" if flag in flags else "no" for name, flag in (("2", "avx2"), ("512", "avx512f"))
    }
    return f"AVX2 {has['2']}, AVX-512 {has['512']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--lines", type=int, default=10_000)
    args = parser.parse_args()
    print(describe())
    print(isa_flags())
    with tempfile.TemporaryDirectory() as folder:
        lines = generate(Path(folder), args.lines)
        command = [sys.executable, "-m", "xentaudit", "lint", folder]
        times = []
        for run in range(args.runs + 1):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            assert done.returncode == 1, done.stderr  # the generated code has findings
            if run:  # the first run warms the file cache
                times.append(elapsed)
        summary = [
            line for line in done.stdout.splitlines() if " in " in line and "finding" in line
        ]
        findings = summary[-1]
        probe = (  # the whole command, its report included, then what it imported
            "import contextlib, io, sys\nfrom xentaudit.cli import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            f"    cli.main(['lint', {folder!r}])\n"
        )
        check = [sys.executable, "-c", probe + f"print(sorted(set({HEAVY!r}) & set(sys.modules)))"]
        imported = subprocess.run(check, capture_output=True, text=True).stdout.splitlines()[-1]
    median = statistics.median(times)
    print(f"{lines} lines, {args.runs} runs: {findings}")
    print(f"median {median:.3f} s per `xentaudit lint` process (min {min(times):.3f} s)")
    print(f"frameworks imported: {imported}")
    assert imported == "[]", f"lint imported {imported}"
    assert median < TARGET * lines / 10_000, f"slower than {TARGET} s per 10,000 lines"


if __name__ == "__main__":
    main()
