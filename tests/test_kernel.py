"""The compiled kernel itself: that it is in use wherever it could be built, its exp against
mpmath, its instruction-set clones (the same bits), its agreement with the numpy reference, and
its refusal of wrong buffers. The formula's accuracy is tested in tests/test_reference.py."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import mpmath
import numpy as np
import pytest
from test_reference import ADVERSARIAL, EPS64, FLOAT32_ROWS, ulps_off

from xentaudit import reference
from xentaudit.reference import base, cross_entropy

try:
    from xentaudit import _kernel
except ImportError:
    _kernel = None
needs_kernel = pytest.mark.skipif(_kernel is None, reason="xentaudit._kernel is not built")


def test_the_kernel_is_in_use_wherever_a_compiler_could_build_it() -> None:
    # The numpy reference makes every other test pass without the kernel, so this one makes
    # sure a checkout where the kernel could have been built does test it.
    if os.environ.get("XENTAUDIT_REFERENCE") == "numpy":
        pytest.skip("the numpy reference is forced (XENTAUDIT_REFERENCE=numpy)")
    compiler = (sysconfig.get_config_var("CC") or "").split()[:1]
    if not compiler or shutil.which(compiler[0]) is None:
        pytest.skip("no C compiler: the numpy reference is expected")
    assert reference.FLOAT64_METHOD == "float64", (
        f"{compiler[0]} is here but xentaudit._kernel is not importable from "
        f"{Path(base.__file__).parents[1]}: build it (pip install -e . or python setup.py "
        "build_ext --inplace), or set XENTAUDIT_REFERENCE=numpy to test without it"
    )


# The bounds of _kernel.c's exp: one rounding (1/2 ulp) after reduction, polynomial and
# evaluation errors of at most 0.145 ulp (where they are largest: results y 2^k with y in
# [0.7, 1)); subnormal results are rounded once to their coarser grid, where those errors are
# at most half as many of its ulps.
EXP_BOUND_NORMAL, EXP_BOUND_SUBNORMAL = 0.5 + 0.145, 0.5 + 0.145 / 2


@needs_kernel
def test_exp_is_within_its_error_bounds_of_mpmath() -> None:
    rng = np.random.default_rng(3)
    ln2 = math.log(2)
    d = np.concatenate(
        [
            -rng.uniform(0, 746, 3000),
            -rng.uniform(0, 1, 500),
            -rng.uniform(700, 746, 500),  # subnormal results
            [0.0, -0.0, -1e-300, -5e-324, -(2.0**-60), -0.34657359027997264, -0.3465735902799727],
            # r = 0 and |r| = ln2 / 2 (where k changes), near the reduction's extremes of k
            [
                -(k + half) * ln2 + shift
                for k in (1, 20, 1021, 1022, 1074)
                for half in (0.0, 0.5)
                for shift in (-1e-12, 0.0, 1e-12)
            ],
            # exp(d) = 2^-1022, the smallest normal result, and 2^-1075, below which it is 0
            [-708.3964185322641, -708.39641853226, -708.3964185322642, -745.13],
            [-745.1332191019411, -745.14, -746.0, -1e4, -math.inf],
            # |r| = ln2 / 2, where the analysis puts the largest error, for every k of the range
            [-(k + 0.5) * ln2 + shift for k in range(1076) for shift in (-1e-13, 1e-13)],
            # the worst of about 130 million points (normal results 0.622, subnormal ones 0.554)
            [-468.9140675711707, -362.8625489627567, -708.7314540928896, -708.6982536644267],
        ]
    )
    out = np.empty_like(d)
    _kernel.exp_array(d.size, d, out)
    smallest_normal = mpmath.mpf(2) ** -1022
    normal, subnormal = [], []
    with mpmath.workdps(60):
        for v, got in zip(d, out, strict=True):
            truth = mpmath.exp(mpmath.mpf(float(v))) if v > -math.inf else mpmath.mpf(0)
            (normal if truth >= smallest_normal else subnormal).append(ulps_off(float(got), truth))
    # The lower ends pin the measured figures that _kernel.c states.
    assert 0.62 <= max(normal) <= EXP_BOUND_NORMAL
    assert 0.55 <= max(subnormal) <= EXP_BOUND_SUBNORMAL


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_subnormal_term_leaves_the_other_terms_bits(dtype: type) -> None:
    # A row with a term below exp(-708) takes, for all its terms, the exp that rounds subnormal
    # results once: its normal results must be the usual exp's, bit for bit.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((50, 300)) * 4).astype(dtype)
    far = np.concatenate([x, x.max(axis=1, keepdims=True) - dtype(720)], axis=1)
    labels = rng.integers(0, 300, 50)
    near, with_far = (cross_entropy(logits, labels, "float64") for logits in (x, far))
    assert with_far.method == "float64"
    assert near.loss.tobytes() == with_far.loss.tobytes()
    assert near.grad.tobytes() == np.ascontiguousarray(with_far.grad[:, :-1]).tobytes()
    assert near.grad_size.tobytes() == with_far.grad_size.tobytes()


# Run by each clone in its own process: the kernel's results on the inputs in argv[1].
CLONE_RUN = """
import sys
import numpy as np
from xentaudit import _kernel
from xentaudit.reference import cross_entropy, grad_error

inputs, out = np.load(sys.argv[1]), {"isa": np.array(_kernel.isa())}
for case in sorted(name[2:] for name in inputs.files if name.startswith("x:")):
    ref = cross_entropy(inputs["x:" + case], inputs["labels:" + case], "float64")
    assert ref.method == "float64", ref.method
    out["loss:" + case], out["grad:" + case] = ref.loss, ref.grad
    out["size:" + case] = ref.grad_size
for dtype in ("float32", "float64"):
    out["err:" + dtype], out["gsize:" + dtype] = grad_error(inputs["g:" + dtype], inputs["exact"])
out["exp"] = np.empty_like(inputs["d"])
_kernel.exp_array(inputs["d"].size, inputs["d"], out["exp"])
np.savez(sys.argv[2], **out)
"""


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast2sum_gives_the_bits_of_twosum(dtype: type) -> None:
    # A row's running sums take Fast2Sum once every lane's reaches 1 (exact then: each term is
    # at most 1); kept on TwoSum, the sums must be the same bits. 5000 classes at scale 0.1:
    # terms near 1, so the lanes reach 1 within the first block of 1024 and Fast2Sum adds most.
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((24, 5000)) * rng.choice([0.1, 3.0], (24, 1))).astype(dtype)
    k = rng.integers(0, 5000, 24)
    soft = rng.random((24, 5000)) * (rng.random((24, 5000)) < 0.3)
    for labels in (k, soft):
        fast = cross_entropy(x, labels, "float64")
        _kernel._set_fast2sum(False)
        try:
            kept = cross_entropy(x, labels, "float64")
        finally:
            _kernel._set_fast2sum(True)
        for field in ("loss", "grad", "grad_size"):
            assert np.array_equal(getattr(fast, field), getattr(kept, field)), field


def clone_inputs() -> dict[str, np.ndarray]:
    """Adversarial rows, a few thousand random ones (float32 and float64, classes and soft
    labels, -inf logits, terms and gradients down to subnormal), gradients to compare."""
    inputs: dict[str, np.ndarray] = {}

    def case(name: str, x: np.ndarray, labels: np.ndarray) -> None:
        inputs["x:" + name], inputs["labels:" + name] = x, labels

    for name, (row, weights) in ADVERSARIAL.items():
        case(name, np.array([row]), np.array([weights]))
    for name, (row, label) in FLOAT32_ROWS.items():
        case(name, np.array([row], np.float32), np.array([label]))
    rng = np.random.default_rng(11)
    # 2500 classes: past the kernel's blocks of 1024 exponentials, whose sums switch from
    # TwoSum to Fast2Sum once every lane's running sum reaches 1 (at scale 0.1, every row's)
    for c in (67, 1000, 2500):
        n = 60_000 // c
        x = rng.standard_normal((n, c)) * rng.choice([0.1, 1.0, 30.0, 300.0, 1e4], (n, 1))
        x[::7, 1] = -np.inf
        x[1::5] = -rng.uniform(0, 760, (len(x[1::5]), c))  # exp(x - m) subnormal or 0
        x[1::5, 0] = 0.0
        soft = rng.random((n, c)) * (rng.random((n, c)) < 0.3)
        for dtype in (np.float32, np.float64):
            case(f"{c} classes {dtype.__name__}, classes", x.astype(dtype), rng.integers(0, c, n))
            case(f"{c} classes {dtype.__name__}, soft", x.astype(dtype), soft)
    inputs["exact"] = rng.standard_normal((500, 67))
    noisy = inputs["exact"] + rng.normal(0, 1e-3, (500, 67))
    noisy[3, 5], noisy[4, 6], noisy[5, 7] = np.nan, np.inf, -np.inf
    inputs["g:float64"], inputs["g:float32"] = noisy, noisy.astype(np.float32)
    inputs["d"] = -np.concatenate([rng.uniform(0, 746, 20_000), rng.uniform(700, 746, 5000)])
    return inputs


def python_env(**variables: str) -> dict[str, str]:
    """The environment for a Python subprocess that imports the package these tests import
    (installed or the source tree), with the kernel, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if k != "XENTAUDIT_REFERENCE"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(base.__file__).parents[2]), env.get("PYTHONPATH", "")]
    )
    return {**env, **variables}


@needs_kernel
def test_every_clone_gives_the_same_bits(tmp_path: Path) -> None:
    isas = _kernel.supported_isas()
    np.savez(tmp_path / "in.npz", **clone_inputs())
    results = []
    for isa in isas:
        out = tmp_path / f"{isa}.npz"
        run = [sys.executable, "-c", CLONE_RUN, str(tmp_path / "in.npz"), str(out)]
        subprocess.run(run, env=python_env(XENTAUDIT_KERNEL_ISA=isa), cwd=tmp_path, check=True)
        results.append(dict(np.load(out)))
        assert str(results[-1].pop("isa")) == isa
    for isa, result in zip(isas[1:], results[1:], strict=True):
        for name, value in result.items():
            assert value.tobytes() == results[0][name].tobytes(), (isa, name)


@needs_kernel
def test_no_clone_overflows_a_signed_integer(tmp_path: Path) -> None:
    # The exponent arithmetic works on the bits of doubles, in lanes whose results are thrown
    # away too (below the underflow, -inf): built with UBSan, which aborts at its first
    # report, every clone runs the clone test's adversarial inputs to the end. (GCC's
    # -fsanitize=shift does not instrument vector shifts: the kernel shifts unsigned lanes
    # left, and signed ones right only, which GCC and Clang define.)
    repo = Path(__file__).parents[1]
    source = repo / "xentaudit" / "_kernel.c"
    if not source.exists():
        pytest.skip("the kernel's source is not beside the tests")
    shutil.copytree(
        repo / "xentaudit", tmp_path / "xentaudit", ignore=shutil.ignore_patterns("*.so")
    )
    shutil.copy(repo / "setup.py", tmp_path)
    flags = "-fsanitize=shift,signed-integer-overflow -fno-sanitize-recover=all"
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        env={**os.environ, "CFLAGS": flags},
        capture_output=True,
        text=True,
    )
    if not list((tmp_path / "xentaudit").glob("_kernel*.so")):
        pytest.skip(f"this compiler cannot build the kernel with UBSan: {build.stderr[-300:]}")
    np.savez(tmp_path / "in.npz", **clone_inputs())
    env = {k: v for k, v in os.environ.items() if k != "XENTAUDIT_REFERENCE"}
    for isa in _kernel.supported_isas():
        run = [sys.executable, "-c", CLONE_RUN, str(tmp_path / "in.npz"), str(tmp_path / "o.npz")]
        done = subprocess.run(
            run,
            env={**env, "PYTHONPATH": str(tmp_path), "XENTAUDIT_KERNEL_ISA": isa},
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0 and "runtime error" not in done.stderr, (isa, done.stderr)
        assert str(np.load(tmp_path / "o.npz")["isa"]) == isa


@needs_kernel
def test_an_unknown_or_unsupported_clone_is_refused(tmp_path: Path) -> None:
    supported = _kernel.supported_isas()
    unsupported = [isa for isa in ("x86-64-v4", "x86-64-v3") if isa not in supported]
    script = (
        "import importlib, os\n"
        "for want in os.environ['WANT'].split(','):\n"
        "    os.environ['XENTAUDIT_KERNEL_ISA'] = want\n"
        "    try:\n"
        "        print(importlib.import_module('xentaudit._kernel').isa())\n"
        "    except ValueError as exc:\n"
        "        print(exc)\n"
    )
    wants = ["x86-64-v9", *unsupported, ""]  # a module that loaded is not loaded again
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=python_env(WANT=",".join(wants)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    lines = run.stdout.splitlines()
    choices = f"choose one of {', '.join(supported)}, or unset it"
    assert lines[0] == f"XENTAUDIT_KERNEL_ISA=x86-64-v9: no such clone; {choices}"
    for isa, line in zip(unsupported, lines[1:-1], strict=True):
        assert line == f"XENTAUDIT_KERNEL_ISA={isa}: this CPU cannot run that clone; {choices}"
    assert lines[-1] == supported[0]  # empty: the best


@pytest.mark.skipif(reference.FLOAT64_METHOD != "float64", reason="the kernel is not in use")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernel_and_the_numpy_reference_agree(dtype: type) -> None:
    rng = np.random.default_rng(4)
    for c in (1, 7, 100, 3000):
        scale = rng.choice([0.1, 10.0, 1e3])
        x = (rng.standard_normal((600 // math.isqrt(c), c)) * scale).astype(dtype)
        if c > 1:
            x[::3, -1] = -np.inf
        soft = rng.random(x.shape) * (rng.random(x.shape) < 0.3)
        for labels in (rng.integers(0, c, len(x)), soft):
            kernel = cross_entropy(x, labels, "float64")
            numpy = cross_entropy(x, labels, "float64-numpy")
            assert (kernel.method, numpy.method) == ("float64", "float64-numpy")
            # They differ in exp (0.65 and 0.51 ulp), in the order of the compensated sums
            # (0.5 ulp each) and in log1p's rounding of the two t (<1 ulp): 4 ulps (measured:
            # 1 here, 2 over 20,000 random losses, 98 % of which were identical).
            finite = np.isfinite(kernel.loss)
            assert np.array_equal(kernel.loss[~finite], numpy.loss[~finite])
            ulps = np.abs(kernel.loss[finite] - numpy.loss[finite]) / np.spacing(
                kernel.loss[finite]
            )
            assert np.all(ulps <= 4)
            # |g| <= bound = max(sum(y), 1). The exps differ by <= 1.2 ulps of q_j (scaled to
            # <= bound), numpy rounds q_j * scale before subtracting y_j where the kernel fuses
            # them (0.5), and each rounds its result (0.5 + 0.5): 4 EPS64 * bound (measured 0.94).
            bound = np.maximum(1.0, labels.sum(axis=1) if labels.ndim == 2 else 1.0)
            assert np.all(np.abs(kernel.grad - numpy.grad).max(axis=1) <= 4 * EPS64 * bound)


@needs_kernel
def test_kernel_refuses_mismatched_buffers() -> None:
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="grad"):
        _kernel.cross_entropy(2, 3, x, np.zeros(2, np.int64), np.empty(2), np.empty(5), np.empty(2))
    with pytest.raises(ValueError, match="out of range"):
        _kernel.cross_entropy(2, 3, x, np.array([0, 3]), np.empty(2), np.empty((2, 3)), np.empty(2))
    g, exact = np.zeros((2, 3), dtype=np.float32), np.zeros((2, 3))
    with pytest.raises(ValueError, match="as many err and size as grads"):
        _kernel.grad_error(2, 3, (g, g), exact, (np.empty(2),), (np.empty(2), np.empty(2)))
    with pytest.raises(ValueError, match="as many err and size as grads"):
        _kernel.grad_error(2, 3, (), exact, (), ())
    many = base.MAX_GRADS + 1  # the kernel's bound is the Python side's
    with pytest.raises(ValueError, match=f"1 to {many - 1} of them"):
        _kernel.grad_error(2, 3, (g,) * many, exact, (np.empty(2),) * many, (np.empty(2),) * many)
    # the second gradient's buffer is the wrong size: refused, the buffers borrowed before it
    # (exact's, the first gradient's) released: their reference counts are back
    counts = sys.getrefcount(g), sys.getrefcount(exact)
    with pytest.raises(ValueError, match="grad must hold 6 items"):
        _kernel.grad_error(2, 3, (g, g[:1]), exact, (np.empty(2),) * 2, (np.empty(2),) * 2)
    assert (sys.getrefcount(g), sys.getrefcount(exact)) == counts


@needs_kernel
def test_a_clone_that_cannot_run_is_the_users_error(tmp_path: Path) -> None:
    # a ConfigError (exit 2, one line), not the kernel's ValueError (an internal error, exit 3)
    script = (
        "from xentaudit.errors import ConfigError\n"
        "try:\n"
        "    import xentaudit.reference.base\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=python_env(XENTAUDIT_KERNEL_ISA="x86-64-v9"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("XENTAUDIT_KERNEL_ISA=x86-64-v9: no such clone; "), run.stdout
