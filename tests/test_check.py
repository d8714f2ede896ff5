"""`check` on saved files: formats, label kinds, streaming, bad input, reports, exit codes.

Expected numbers are closed forms computed here (Keras' clip in float32), never xentaudit output.
"""

from __future__ import annotations

import json
import sys
import weakref
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit.check import check_file
from xentaudit.cli import cli
from xentaudit.flags import CHECK_FAIL_ON

FIXTURES = Path(__file__).parent.parent / "fixtures"
FAST = ["--impl", "keras_cce_probs", "--impl", "tf_softmax_xent", "--mode", "eager"]


def run(*args: str):
    return CliRunner().invoke(cli, ["check", *args])


def test_fixtures_are_what_their_script_makes(tmp_path) -> None:
    import runpy

    runpy.run_path(str(FIXTURES / "make_fixtures.py"), run_name="fixtures")["main"](tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.np*"))
    kept = sorted(p.relative_to(FIXTURES) for p in FIXTURES.rglob("*.np*"))
    assert made == kept
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (FIXTURES / rel).read_bytes(), rel


def test_seed_fixture_fails_on_the_keras_clip() -> None:
    result = run(str(FIXTURES / "seed_scale10.npz"), *FAST)
    assert result.exit_code == 1
    # Row 1's exact loss is 30 (to 1e-13); Keras clips p to float32(1e-7): -log(1e-7) in float32.
    clipped = float(-np.log(np.float32(1e-7)))
    assert f"row 1 exact 30, got {clipped:.10g} (divergent grad-vanish)" in result.stdout
    assert "FAIL" in result.stdout


def test_clean_fixtures_pass() -> None:
    # The command line, every backend's implementations audited in a process of its own...
    result = run(str(FIXTURES / "clean.npz"), "--mode", "eager")
    assert result.exit_code == 0, result.stdout
    assert "PASS" in result.stdout
    # ...and the same check of the other two in this process, where the frameworks are loaded
    # already (a check apart is the one-process check: test_check_apart.py).
    for name in ("clean_bf16.npy", "soft_labels.npz"):
        check = check_file(FIXTURES / name, modes=["eager"])
        assert check.exit_code(CHECK_FAIL_ON) == 0, (name, check.verdict().message)
        assert check.verdict().status == "pass", name


BAD = {
    "pickled.npy": "never unpickles",
    "truncated.npy": "is truncated",
    "not_npy.npy": "not a readable .npy array",
    "one_d.npy": "has shape (5,)",
    "int_logits.npy": "has dtype int64",
    "empty.npy": "has shape (0, 5)",
    "nan_logits.npz": "NaN in rows 2, 5",
    "wrong_keys.npz": "has no array 'logits' (it has x, y)",
    "labels_out_of_range.npz": "out of range in row 2",
    "labels_negative.npz": "out of range in row 1",
    "mismatched.npz": "do not fit logits",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_fixtures_exit_2_with_one_line_and_write_nothing(name: str, tmp_path) -> None:
    report = tmp_path / "report.json"
    result = run(str(FIXTURES / "bad" / name), "--output", str(report), *FAST)
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and BAD[name] in lines[0] and lines[0].startswith("xentaudit: error:")
    assert list(tmp_path.iterdir()) == []  # no report, no temporary file left behind


def test_output_folder_must_exist_before_any_work(tmp_path) -> None:
    result = run(str(FIXTURES / "seed_scale10.npz"), "--output", str(tmp_path / "no" / "r.txt"))
    assert result.exit_code == 2 and "--output: no such directory" in result.stderr


def test_a_dtype_that_cannot_hold_the_logits_is_an_input_error(tmp_path) -> None:
    np.savez(tmp_path / "x.npz", logits=np.array([[1e5, 0, 0]], np.float32), labels=np.array([0]))
    result = run(str(tmp_path / "x.npz"), "--dtype", "float16", "--impl", "tf_softmax_xent")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "overflow float16 (max 65504); drop --dtype float16" in lines[0]


def test_missing_file_and_bad_options() -> None:
    assert "no such file" in run("nope.npz").stderr
    assert run(str(FIXTURES / "clean.npz"), "--chunk-rows", "0").exit_code == 2
    assert run(str(FIXTURES / "clean.npz"), "--impl", "nope").exit_code == 2


def test_npy_with_separate_labels_and_leading_axes(tmp_path) -> None:
    x = np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]] * 3, dtype=np.float64).reshape(3, 2, 3) * 10
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.tile([0, 1], 3).reshape(3, 2))
    check = check_file(
        tmp_path / "x.npy", labels=tmp_path / "y.npy", impls=["keras_cce_probs"], modes=["eager"]
    )
    (r,) = check.results
    assert (check.rows, check.classes, check.file_dtype) == (6, 3, "float64")
    assert r.flag_counts["divergent"] == 3  # every odd row
    assert sorted(w.row for w in r.worst_rows if "divergent" in w.flags) == [1, 3, 5]


def test_one_hot_and_soft_labels_agree_with_class_labels(tmp_path) -> None:
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32) * 8
    k = np.array([0, 3, 1, 2, 2, 0])
    np.savez(tmp_path / "sparse.npz", logits=x, labels=k)
    np.savez(tmp_path / "onehot.npz", logits=x, labels=np.eye(4, dtype=np.float32)[k])
    a = check_file(tmp_path / "sparse.npz", impls=["clipped"], modes=["eager"])
    b = check_file(tmp_path / "onehot.npz", impls=["clipped"], modes=["eager"])
    assert a.results[0].flag_counts == b.results[0].flag_counts
    assert a.results[0].worst_rows == b.results[0].worst_rows


def test_bfloat16_files_are_detected() -> None:
    check = check_file(FIXTURES / "clean_bf16.npy", impls=["tf_softmax_xent"], modes=["eager"])
    assert check.file_dtype == "bfloat16"
    assert {r.dtype for r in check.results} == {"bfloat16"}


def test_without_labels_rows_are_checked_against_predicted_and_worst_case_class(tmp_path) -> None:
    x = np.array([[3.0, 1.0, 1.0], [-1.0, 2.0, 5.0]], dtype=np.float32) * 10
    np.save(tmp_path / "x.npy", x)
    check = check_file(tmp_path / "x.npy", impls=["keras_cce_probs"], modes=["eager"])
    by_source = {r.labels: r for r in check.results}
    assert set(by_source) == {"predicted", "worst-case"} and "none" in check.labels
    # The predicted class has p ~ 1 (no clip below); the worst class of row 1 has p = e^-60.
    assert "divergent" not in by_source["predicted"].flags
    assert "divergent" in by_source["worst-case"].flags


def test_sparse_impls_are_skipped_for_soft_labels() -> None:
    check = check_file(FIXTURES / "soft_labels.npz", modes=["eager"])
    sparse = {
        "tf_sparse_softmax_xent", "keras_scce_logits", "torch_log_softmax_nll",
        "optax_softmax_xent_int",
    }  # fmt: skip
    assert {s.impl for s in check.skipped} == sparse
    assert "double_softmax" not in {r.impl for r in check.results}  # not a default


@pytest.mark.usefixtures("rows_alone")
def test_chunked_results_equal_unchunked_exactly(tmp_path) -> None:
    # 13 rows: chunks of one row each, of 5 (the last of 3), of 12 and 1; the same outcome of
    # each row whatever its chunk (rows_alone), so check's merges must give the same document
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((13, 9)) * rng.choice([1, 10, 40], (13, 1))).astype(np.float32)
    np.savez(tmp_path / "x.npz", logits=x, labels=rng.integers(0, 9, 13))
    whole = check_file(tmp_path / "x.npz", modes=["eager"]).to_dict()
    # ties among NaN rows, too
    assert any(r["flag_counts"].get("nan", 0) > 1 for r in whole["results"])
    for rows in (1, 5, 12):
        chunked = check_file(tmp_path / "x.npz", modes=["eager"], chunk_rows=rows).to_dict()
        assert json.dumps(chunked) == json.dumps(whole)  # NaN as NaN


def test_a_chunks_runs_are_graded_once_all_have_run_without_their_gradients(
    tmp_path, monkeypatch
) -> None:
    # audit.Graded: each run's gradient is summed up by its row maxima as soon as the
    # implementation has run in the modes asked for (here one) and let go; the rest of the
    # grading waits until every run on the chunk in that dtype is done, so that numpy's small
    # calls run back to back instead of each after a framework's run. (With --loss-scale,
    # max_loss_scale's runs come in between too; not counted here.)
    audit = sys.modules["xentaudit.audit"]  # the module, not the function xentaudit.audit
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 7)).astype(np.float32)
    np.savez(tmp_path / "x.npz", logits=x, labels=rng.integers(0, 7, 12))
    events: list[str] = []
    gradients: list[weakref.ref] = []
    run, grade = audit._run, audit.grade

    def logged_run(*args, **kwargs):
        outcome = run(*args, **kwargs)
        events.append("run")
        gradients.append(weakref.ref(outcome.grad))
        return outcome

    def logged_grade(*args, **kwargs):
        events.append("grade")
        # no gc.collect(): a gradient that only a reference cycle keeps holds its memory until
        # a collection, so it counts as kept
        assert all(alive() is None for alive in gradients), "a graded run kept its gradient"
        return grade(*args, **kwargs)

    monkeypatch.setattr(audit, "_run", logged_run)
    monkeypatch.setattr(audit, "grade", logged_grade)
    impls = ["naive", "shifted", "tf_softmax_xent"]
    check = check_file(tmp_path / "x.npz", impls=impls, modes=["eager"], chunk_rows=5)
    assert len(check.results) == 3
    assert events == (["run"] * 3 + ["grade"] * 3) * 3  # 3 chunks of 5, 5 and 2 rows


def test_an_implementations_modes_are_compared_with_the_exact_gradient_in_one_pass(
    tmp_path, monkeypatch
) -> None:
    # audit.run_shared runs an implementation in each mode, then takes the row maxima of all
    # their gradients in one grad_errors call, which reads the exact gradient once for them:
    # the gradients alive at any run are at most those of the implementation's earlier modes.
    audit = sys.modules["xentaudit.audit"]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 7)).astype(np.float32)
    np.savez(tmp_path / "x.npz", logits=x, labels=rng.integers(0, 7, 12))
    compared: list[int] = []
    gradients: list[weakref.ref] = []
    alive_at_runs: list[int] = []
    run, grad_errors = audit._run, audit.grad_errors

    def logged_run(*args, **kwargs):
        # no gc.collect() (as above): a gradient alive in a reference cycle counts as alive
        alive_at_runs.append(sum(alive() is not None for alive in gradients))
        outcome = run(*args, **kwargs)
        gradients.append(weakref.ref(outcome.grad))
        return outcome

    def logged_grad_errors(grads, exact, *args):
        compared.append(len(grads))
        return grad_errors(grads, exact, *args)

    monkeypatch.setattr(audit, "_run", logged_run)
    monkeypatch.setattr(audit, "grad_errors", logged_grad_errors)
    impls = ["naive", "shifted", "tf_softmax_xent"]
    paired = check_file(tmp_path / "x.npz", impls=impls, chunk_rows=5)
    assert compared == [2] * 9  # 3 implementations on 3 chunks, both modes in one pass each
    assert alive_at_runs == [0, 1] * 9
    # with a loss scale, max_loss_scale's runs follow both modes' and find no gradient alive
    compared.clear(), gradients.clear(), alive_at_runs.clear()
    check_file(tmp_path / "x.npz", impls=impls, chunk_rows=5, loss_scale=2.0**10)
    assert compared == [2] * 9
    assert alive_at_runs.count(1) == 9 and max(alive_at_runs) == 1
    assert len(alive_at_runs) > 18  # the searches ran
    monkeypatch.undo()
    apart = [
        check_file(tmp_path / "x.npz", impls=impls, modes=[mode], chunk_rows=5).to_dict()
        for mode in ("eager", "graph")
    ]
    results = [r for one in apart for r in one["results"]]
    order = {(r["impl"], r["mode"]): i for i, r in enumerate(paired.to_dict()["results"])}
    results.sort(key=lambda r: order[(r["impl"], r["mode"])])
    assert paired.to_dict()["results"] == results


def test_worst_rows_kept_do_not_depend_on_the_chunks_or_their_order() -> None:
    # _Tally.add keeps the WORST_ROWS worst rows under one total order (failing first, then the
    # larger error, then the earlier row) and lets a chunk's rows skip the heap once they cannot
    # enter it: added whole, in chunks, or in chunks out of row order (as shards merge), the same
    # rows stay. Errors drawn from 3 values, so that ties need the row order to break them.
    from xentaudit.audit import ROW_FLAGS, Grades
    from xentaudit.check import WORST_ROWS, _ExactMean, _Tally

    rng = np.random.default_rng(5)
    n = 60
    rel = rng.choice([1e-8, 0.5, np.inf], n)
    failing = rng.random(n) < 0.3
    masks = {f: np.zeros(n, bool) for f in ROW_FLAGS}
    masks["divergent"] = failing

    def tally(parts) -> list:
        t = _Tally()
        for part in parts:
            sub = {f: m[part] for f, m in masks.items()}
            grades = Grades(rel[part], rel[part], rel[part], sub, False, 1e-6)
            t.add(part, rel[part], rel[part], grades, _ExactMean())
        return sorted(t.worst, reverse=True)

    whole = tally([np.arange(n)])
    assert len(whole) == WORST_ROWS
    expected = sorted(range(n), key=lambda i: (failing[i], rel[i], -i), reverse=True)[:WORST_ROWS]
    assert [row.row for _, row in whole] == expected
    chunks = np.array_split(np.arange(n), 12)
    assert tally(chunks) == whole
    assert tally(chunks[::-1]) == whole


def test_nan_rows_are_reported_with_file_row_numbers_across_chunks() -> None:
    with pytest.raises(Exception, match="NaN in rows 2, 5"):
        check_file(FIXTURES / "bad" / "nan_logits.npz", chunk_rows=2, modes=["eager"])


def test_json_report_keys_and_output_file(tmp_path) -> None:
    out = tmp_path / "report.json"
    result = run(
        str(FIXTURES / "seed_scale10.npz"), *FAST, "--format", "json", "--output", str(out)
    )
    assert result.exit_code == 1 and result.stdout == ""
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["command"] == "check" and "divergent" in doc["fail_on"]
    assert (doc["rows"], doc["classes"], doc["file_dtype"]) == (2, 3, "float32")
    keras = next(r for r in doc["results"] if r["impl"] == "keras_cce_probs")
    assert set(keras) == {
        "labels", "impl", "dtype", "mode", "output_dtype", "eps", "rows", "loss_mean",
        "exact_mean", "flags", "flag_counts",
        "max_rel_err", "grad_max_abs_err", "worst_rows", "error_histogram", "policy",
        "max_loss_scale", "loss_reduced", "exact_reduced", "mean_spacing", "label_weights",
    }  # fmt: skip
    assert keras["flag_counts"] == {"divergent": 1, "grad-vanish": 1}
    # exact row 1: log(e^-10 + e^20 + e^50) - 20 = 30 + log1p(e^-30 + e^-60) = 30 + 9.4e-14
    worst = keras["worst_rows"][0]
    assert worst["row"] == 1 and worst["exact"] == pytest.approx(30 + np.exp(-30), rel=1e-15)
    assert sum(keras["error_histogram"].values()) == 2


def test_fail_on_overrides_the_default(tmp_path) -> None:
    assert run(str(FIXTURES / "seed_scale10.npz"), *FAST, "--fail-on", "nan").exit_code == 0
    # Row 0's exact loss 4.1e-9 is representable in float32 and tf_softmax_xent returns 0: the
    # informational zero-loss fails the gate when it is named.
    assert run(str(FIXTURES / "seed_scale10.npz"), *FAST, "--fail-on", "zero-loss").exit_code == 1


def test_bfloat16_roundtrip_value_is_what_ml_dtypes_wrote(tmp_path) -> None:
    values = np.array([[1.5, -2.25, 1e30]], dtype=np.float32)
    np.save(tmp_path / "b.npy", values.astype(ml_dtypes.bfloat16))
    from xentaudit.io import open_arrays

    logits, _ = open_arrays(tmp_path / "b.npy", None, "logits", None)
    (chunk,) = logits.chunks(1, 3)
    assert np.array_equal(
        chunk.astype(np.float64), values.astype(ml_dtypes.bfloat16).astype(np.float64)
    )


def test_masked_logits_are_audited_in_a_narrower_dtype(tmp_path) -> None:
    # -inf is a masked class, not an overflow: a float32 file with -inf checks in float16. The
    # sparse loss reads only the label's log-probability and is right on every row; the
    # clipping Keras loss reads -ln(1e-7) where the label sits on the masked class (exact +inf).
    x = np.array([[0.0, -np.inf, 1.0], [0.0, -np.inf, 1.0]], np.float32)
    np.savez(tmp_path / "m.npz", logits=x, labels=np.array([2, 1]))
    c = check_file(
        tmp_path / "m.npz",
        impls=["tf_sparse_softmax_xent", "keras_cce_probs"],
        dtypes=["float16"],
        modes=["eager"],
    )
    sparse, keras = c.results
    assert sparse.flags == () and sparse.dtype == "float16"
    assert keras.flag_counts == {"divergent": 1, "grad-vanish": 1}
    assert keras.worst_rows[0].row == 1 and keras.worst_rows[0].exact == np.inf


def test_labels_may_be_an_array_and_eps_may_be_several(tmp_path) -> None:
    # Labels given inline (the CLI's --labels JSON) override the .npz's; `clipped` runs once per
    # eps: at 1e-7 it caps row 1's loss of 30 at -ln(1e-7) = 16.1, at 1e-30 it does not.
    c = check_file(
        FIXTURES / "seed_scale10.npz",
        labels=np.array([0, 1]),
        impls=["clipped"],
        eps=[1e-7, 1e-30],
        modes=["eager"],
    )
    assert [r.eps for r in c.results] == [1e-7, 1e-30]
    assert "divergent" in c.results[0].flags and "divergent" not in c.results[1].flags
    assert c.labels == "--labels"
    flipped = check_file(FIXTURES / "seed_scale10.npz", labels=np.array([1, 0]),
                         impls=["tf_sparse_softmax_xent"], modes=["eager"])  # fmt: skip
    # The labels really came from the array: LSE(10 [3, 1, 1]) - 10 = 20 and LSE(10 [-1, 2, 5])
    # + 10 = 60 (to 1e-9), where the file's labels give 4e-9 and 30.
    exact = sorted(w.exact for w in flipped.results[0].worst_rows)
    assert exact == pytest.approx([20.0, 60.0], rel=1e-9)


def test_every_report_names_the_reference_method_actually_used(tmp_path) -> None:
    # Forced to the numpy fallback (what an install without a C compiler runs), check's JSON and
    # table say so; the default run names the compiled kernel when it is built.
    import os
    import subprocess
    import sys

    from xentaudit.reference import FLOAT64_METHOD

    # one of JAX's losses: the process spends its time on the reference, not importing TensorFlow
    args = [sys.executable, "-m", "xentaudit", "check", str(FIXTURES / "clean.npz")]
    args += ["--impl", "optax_softmax_xent", "--mode", "eager"]
    env = {**os.environ, "XENTAUDIT_REFERENCE": "numpy"}
    out = subprocess.run([*args, "--format", "json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["reference_method"] == "float64-numpy"
    table = run(str(FIXTURES / "clean.npz"), *FAST)
    kernel = "compiled kernel" if FLOAT64_METHOD == "float64" else "numpy"
    assert f"exact values: float64 max-separated log-sum-exp ({kernel})" in table.stdout


def test_only_a_default_zoo_offers_to_pin_its_fused_losses() -> None:
    seed = FIXTURES / "seed_scale10.npz"
    default = check_file(seed, modes=["eager"])
    assert default.pinnable == (
        "tf_softmax_xent", "tf_sparse_softmax_xent", "keras_cce_logits", "keras_scce_logits",
        "torch_cross_entropy", "torch_log_softmax_nll", "torch_autocast_bf16",
        "optax_softmax_xent", "optax_softmax_xent_int", "optax_safe_softmax_xent",
    )  # fmt: skip
    assert default.verdict().message.startswith("Only implementations outside the fused")
    named = check_file(seed, impls=["clipped", "tf_softmax_xent"], modes=["eager"])
    assert named.pinnable == () and not named.verdict().message.startswith("Only")
