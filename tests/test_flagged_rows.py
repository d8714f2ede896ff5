"""`check --flagged-rows FILE.csv`: every flagged row of every result, streamed to a file written
atomically; and the loss and exact means of `check`'s results. Expected values come from mpmath
and closed forms on the seed rows [30, 10, 10] (label 0) and [-10, 20, 50] (label 1)."""

from __future__ import annotations

import csv
import json
import math
import os
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner
from factories import check_case

from xentaudit.check import _ExactMean, check_file
from xentaudit.cli import cli
from xentaudit.flags import CHECK_FAIL_ON
from xentaudit.report import markdown, table
from xentaudit.results import Check

FIXTURES = Path(__file__).parent.parent / "fixtures"
SEED = FIXTURES / "seed_scale10.npz"
FAST = ("--impl", "naive", "--impl", "keras_cce_probs", "--mode", "eager")
COLUMNS = [
    "row", "impl", "eps", "dtype", "policy", "mode", "labels", "flags",
    "exact", "loss", "rel_err", "grad_err", "shard", "shard_row",
]  # fmt: skip
F32_ULP_16 = 2.0**-19  # float32 spacing in [16, 32)
F64_2ULP = 2.0**-51  # relative: the float64 reference is within 2 ulps of mpmath (README)

mpmath.mp.dps = 50
E = mpmath.exp
EXACT = (
    mpmath.log(1 + 2 * E(-20)),  # row 0: LSE(30, 10, 10) - 30
    mpmath.log(E(-10) + E(20) + E(50)) - 20,  # row 1: LSE(-10, 20, 50) - 20
)
# Exact gradients, softmax(x) - y, largest entry: naive's float32 gradient is exactly 0 on row 0
# (its softmax rounds to [1, 0, 0]) and Keras' clip zeroes the whole gradient on row 1.
GRAD_ERR = (2 * E(-20) / (1 + 2 * E(-20)), 1 - E(20) / (E(-10) + E(20) + E(50)))
# Keras clips the label's probability e^-30 to float32(1e-7): the loss is -ln of that, in float32
CLIPPED = -mpmath.log(mpmath.mpf(float(np.float32(1e-7))))  # 16.1180956...


def run(*args: str):
    return CliRunner().invoke(cli, ["check", *args])


def seed_rows(tmp_path: Path, rows: int) -> Path:
    """The seed's two rows repeated: even rows are row 0, odd rows row 1."""
    seed = np.load(SEED)
    path = tmp_path / "seed.npz"
    np.savez(
        path, logits=np.resize(seed["logits"], (rows, 3)), labels=np.resize(seed["labels"], rows)
    )
    return path


def test_the_csv_holds_exactly_the_flagged_rows_the_same_whatever_the_chunking(tmp_path) -> None:
    logits = seed_rows(tmp_path, 7)
    texts = []
    for chunking in (("--chunk-rows", "1"), ("--chunk-rows", "3"), ()):
        out = tmp_path / "rows.csv"
        result = run(str(logits), *FAST, *chunking, "--flagged-rows", str(out), "--format", "json")
        assert result.exit_code == 1, result.output  # keras_cce_probs diverges
        assert json.loads(result.stdout)["flagged_rows"] == 7
        texts.append(out.read_text())
    assert texts[0] == texts[1] == texts[2]
    lines = list(csv.reader(texts[0].splitlines()))
    assert lines[0] == COLUMNS
    rows = [dict(zip(COLUMNS, line, strict=True)) for line in lines[1:]]
    # naive reads 0 on every row 0 (zero-loss, informational); Keras' clip on every row 1
    expected = [("naive", "", "zero-loss"), ("keras_cce_probs", "1e-07", "divergent grad-vanish")]
    assert [(int(r["row"]), r["impl"], r["eps"], r["flags"]) for r in rows] == [
        (i, *expected[i % 2]) for i in range(7)
    ]
    for r in rows:
        assert (r["dtype"], r["policy"], r["mode"], r["labels"]) == (
            "float32", "float32", "eager", "file"
        )  # fmt: skip
        i = int(r["row"]) % 2
        exact, loss = float(r["exact"]), float(r["loss"])
        assert exact == pytest.approx(float(EXACT[i]), rel=F64_2ULP)
        # float32 log is faithful: within 1 ulp of -ln(float32(1e-7))
        assert loss == (0.0 if i == 0 else pytest.approx(float(CLIPPED), abs=F32_ULP_16))
        rel = abs(loss - EXACT[i]) / max(abs(EXACT[i]), 1)
        assert float(r["rel_err"]) == pytest.approx(float(rel), rel=F64_2ULP)
        assert float(r["grad_err"]) == pytest.approx(float(GRAD_ERR[i]), rel=F64_2ULP)


def test_non_finite_numbers_are_spelled_as_in_json(tmp_path) -> None:
    # [0, -inf, 1] with label 0: a dense loss computes 0 * log 0 = NaN on the masked class
    np.savez(tmp_path / "m.npz", logits=np.array([[0.0, -np.inf, 1.0]]), labels=np.array([0]))
    out = tmp_path / "rows.csv"
    impl = ("--impl", "tf_softmax_xent", "--mode", "eager")
    assert run(str(tmp_path / "m.npz"), *impl, "--flagged-rows", str(out)).exit_code == 1
    (row,) = csv.DictReader(out.read_text().splitlines())
    assert (row["flags"], row["loss"], row["rel_err"]) == ("nan", "nan", "nan")


def test_the_means_are_the_closed_forms() -> None:
    check = check_file(SEED, impls=["naive", "keras_cce_probs"], modes=["eager"])
    naive, keras = check.results
    exact_mean = float((EXACT[0] + EXACT[1]) / 2)
    for r in check.results:
        assert r.exact_mean == pytest.approx(exact_mean, rel=F64_2ULP)
    # float32 losses, each within 1 ulp (2^-23 relative) of its closed form: naive reads 0 and
    # fl32(30); Keras reads -ln(1 - 2^-23) (p = 1 clipped to fl32(1 - 1e-7)) and CLIPPED
    assert naive.loss_mean == pytest.approx(15.0, rel=2.0**-23)
    keras_mean = (-mpmath.log(1 - mpmath.mpf(2) ** -23) + CLIPPED) / 2
    assert keras.loss_mean == pytest.approx(float(keras_mean), rel=2.0**-23)


def test_a_nan_loss_makes_the_mean_nan_and_a_masked_label_the_exact_mean_inf(tmp_path) -> None:
    # row 0: NaN from the dense loss (0 * log 0); row 1: the label is masked, exact loss +inf
    logits = np.array([[0.0, -np.inf, 1.0], [0.0, -np.inf, 1.0]])
    np.savez(tmp_path / "m.npz", logits=logits, labels=np.array([0, 1]))
    (r,) = check_file(tmp_path / "m.npz", impls=["tf_softmax_xent"], modes=["eager"]).results
    assert math.isnan(r.loss_mean) and r.exact_mean == math.inf


@pytest.mark.parametrize("chunks", [1, 2, 3, 7])
def test_exact_means_round_once_whatever_the_chunking(chunks: int) -> None:
    # Cancellation (1e308 - 1e308), a subnormal, and values far apart: a float64 sum loses 1.0
    values = np.array([1e308, 1.0, -1e308, 5e-324, 2.5, -3.25e-300, 1e-16])
    mean = _ExactMean()
    for part in np.array_split(values, chunks):
        mean.add(part)
    exact = sum(map(Fraction, values.tolist()), Fraction(0)) / len(values)
    assert mean.mean() == float(exact)  # float(Fraction) rounds correctly
    assert float(np.sum(values)) / len(values) != float(exact)  # so the test can fail


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1.0, math.inf], math.inf), ([-math.inf, 1.0], -math.inf), ([math.inf, -math.inf], math.nan),
     ([math.nan, 1.0], math.nan)],
)  # fmt: skip
def test_non_finite_values_decide_the_mean(values: list[float], expected: float) -> None:
    mean = _ExactMean()
    mean.add(np.array(values))
    assert mean.mean() == pytest.approx(expected, nan_ok=True)


def test_the_reports_say_how_many_rows_were_flagged_and_where_they_went() -> None:
    case = check_case()
    written = Check(**{**case.__dict__, "flagged_rows": 1, "flagged_rows_path": "out/rows.csv"})
    assert written.verdict().message.endswith(". 1 flagged row written to out/rows.csv.")
    many = Check(**{**case.__dict__, "flagged_rows": 12, "flagged_rows_path": "rows.csv"})
    line = "12 flagged rows written to rows.csv."
    assert line in table.render_check(many, CHECK_FAIL_ON)
    assert line in markdown.render(many, CHECK_FAIL_ON)
    assert "flagged row" not in case.verdict().message  # not written: nothing said


def test_a_failed_audit_leaves_no_csv_and_the_old_one_as_it_was(tmp_path) -> None:
    out = tmp_path / "rows.csv"
    out.write_text("the previous list\n")
    bad = str(FIXTURES / "bad" / "nan_logits.npz")
    result = run(bad, *FAST, "--chunk-rows", "1", "--flagged-rows", str(out))
    assert result.exit_code == 2 and "NaN" in result.stderr
    assert os.listdir(tmp_path) == ["rows.csv"]  # no temporary file left
    assert out.read_text() == "the previous list\n"


def test_a_written_csv_leaves_no_temporary_file(tmp_path) -> None:
    out = tmp_path / "rows.csv"
    assert run(str(SEED), *FAST, "--flagged-rows", str(out)).exit_code == 1
    assert os.listdir(tmp_path) == ["rows.csv"]
    assert len(out.read_text().splitlines()) == 3  # the header and the two flagged rows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--flagged-rows", "{tmp}"), "--flagged-rows {tmp} is a directory; give a file name"),
        (
            ("--flagged-rows", "{tmp}/no/rows.csv"),
            "--flagged-rows: no such directory: {tmp}/no; create it first",
        ),
        (
            ("--flagged-rows", "{tmp}/r", "--output", "{tmp}/./r"),
            "--output and --flagged-rows name the same file; give two names",
        ),
    ],
)
def test_a_target_that_cannot_be_written_is_refused_before_the_audit(
    tmp_path, no_audit, args: tuple[str, ...], message: str
) -> None:
    result = run(str(SEED), *FAST, *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"xentaudit: error: {message.format(tmp=tmp_path)}\n"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, full_disk) -> None:
    out = tmp_path / "rows.csv"
    result = run(str(SEED), *FAST, "--flagged-rows", str(out))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"xentaudit: error: --flagged-rows: cannot write {out} (No space left on device); pick "
        "a writable path\n"
    )
    assert os.listdir(tmp_path) == []
