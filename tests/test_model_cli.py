"""`check --model` and `compare --model` through the command line. Ground truth is the real
model, built and saved here: its logits by hand from integer weights and inputs (every product
and sum is a small integer, exact in float32, so equality is exact), and its own compiled loss's
gradient taken by ``tf.GradientTape`` through its own Softmax layer."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner, Result
from test_signals import KILLED_WHILE_WRITING  # SIGTERM once written, before the rename

from xentaudit import model as xm
from xentaudit.cli import cli

ROWS, FEATURES, CLASSES = 48, 4, 3
# Integer weights and inputs: logits are small integers, and true-class probabilities range from
# 1 down past float16's smallest subnormal (6e-8, e^-16.6): those just above it are where
# d(-log p)/dp = -1/p overflows float16 (1/p > 65504), those below it underflow to 0.
KERNEL = np.array([[6, -6, 0], [0, 6, -6], [-6, 0, 6], [1, 0, -1]], np.float32)
BIAS = np.array([1, 0, -1], np.float32)
MIXED = keras.DTypePolicy("mixed_float16")


def _model(
    last: keras.layers.Layer | None, loss: object, folder: Path, name: str
) -> tuple[keras.Model, Path]:
    inputs = keras.Input(shape=(FEATURES,))
    dense = keras.layers.Dense(CLASSES, name="logits")
    outputs = dense(inputs)
    if last is not None:
        outputs = last(outputs)
    model = keras.Model(inputs, outputs)
    dense.set_weights([KERNEL, BIAS])
    model.compile(loss=loss)
    path = folder / f"{name}.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(7)
    # Random rows, then rows whose true class 1 trails the top logit by every gap 1, 2, ..., 32
    # (x = [0, 0, 0, k]: logits [k + 1, 0, -k - 1]).
    ladder = np.zeros((ROWS - 16, FEATURES))
    ladder[:, 3] = np.arange(ROWS - 16)
    x = np.concatenate([rng.integers(-6, 7, size=(16, FEATURES)), ladder]).astype(np.float32)
    y = np.concatenate([rng.integers(0, CLASSES, size=16), np.ones(ROWS - 16, np.int64)])
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    cce = keras.losses.CategoricalCrossentropy
    _, probs = _model(keras.layers.Softmax(dtype=MIXED), cce(), folder, "probs")
    _, logits = _model(None, cce(from_logits=True), folder, "logits")
    _, smoothed = _model(keras.layers.Softmax(), cce(label_smoothing=0.1), folder, "smoothed")
    _, summed = _model(None, cce(from_logits=True, reduction="sum"), folder, "summed")
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    _, ignoring = _model(None, scce, folder, "ignoring")
    _, lam = _model(keras.layers.Lambda(lambda t: t * 2.0), cce(), folder, "lambda")

    def my_loss(y_true: object, y_pred: object) -> object:
        return keras.losses.categorical_crossentropy(y_true, y_pred)

    _, custom = _model(keras.layers.Softmax(), my_loss, folder, "custom")
    return {
        "folder": folder,
        "x": folder / "x.npy",
        "y": folder / "y.npy",
        "probs": probs,
        "logits": logits,
        "smoothed": smoothed,
        "summed": summed,
        "lambda": lam,
        "custom": custom,
        "ignoring": ignoring,
    }


def _run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _hand_logits(x: np.ndarray) -> np.ndarray:
    return x @ KERNEL + BIAS  # exact: small integers


def _flagged(csv_path: Path, impl: str, flag: str) -> set[int]:
    with open(csv_path, newline="") as stream:
        return {
            int(row["row"])
            for row in csv.DictReader(stream)
            if row["impl"] == impl and row["mode"] == "eager" and flag in row["flags"].split()
        }


def _real_gradient(path: Path, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row by row, the gradient of the real model's own compiled loss w.r.t. its logits,
    through its own final Softmax layer: the loss per row (its config with ``reduction=None``),
    as xentaudit grades it; a mean over a batch would scale each row's gradient by 1/N."""
    model = keras.saving.load_model(path)
    per_row = model.loss.from_config({**model.loss.get_config(), "reduction": None})
    logits = tf.constant(_hand_logits(x))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = per_row(tf.one_hot(y, CLASSES), model.layers[-1](logits))
    return np.asarray(tape.gradient(loss, logits))


def test_the_models_own_path_fails_where_its_gradient_does(
    files: dict[str, Path], tmp_path: Path
) -> None:
    rows_csv = tmp_path / "rows.csv"
    args = ("check", "--model", files["probs"], "--inputs", files["x"], "--labels", files["y"])
    result = _run(*args, "--mode", "eager", "--flagged-rows", rows_csv, "--format", "json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert doc["verdict"]["status"] == "fail"
    assert {f["impl"] for f in doc["verdict"]["failing"]} == {"model"}
    grad = _real_gradient(files["probs"], np.load(files["x"]), np.load(files["y"]))
    nan_rows = set(np.flatnonzero(np.isnan(grad).any(axis=1)).tolist())
    zero_rows = set(np.flatnonzero((grad == 0).all(axis=1)).tolist())
    assert nan_rows and zero_rows  # the inputs reach both failures
    assert _flagged(rows_csv, "model", "grad-nan") == nan_rows
    # grad-vanish: zero where the exact gradient is clearly not (VANISH_ULPS): every zero row
    # but the confident right ones, whose exact gradient (1 - p, p ~ 1) is below that.
    right = np.argmax(_hand_logits(np.load(files["x"])), axis=1) == np.load(files["y"])
    assert _flagged(rows_csv, "model", "grad-vanish") == {r for r in zero_rows if not right[r]}
    # The same network ending in its logits, compiled with from_logits=True, passes.
    fixed = ("check", "--model", files["logits"], "--inputs", files["x"], "--labels", files["y"])
    assert _run(*fixed, "--mode", "eager").exit_code == 0


def test_the_model_result_spells_its_path_and_runs_under_its_policy(
    files: dict[str, Path],
) -> None:
    args = ("check", "--model", files["probs"], "--inputs", files["x"], "--labels", files["y"])
    result = _run(*args, "--impl", "model", "--mode", "eager", "--format", "json")
    doc = json.loads(result.output)
    spelled = "Softmax[mixed_float16] -> CategoricalCrossentropy(from_logits=False)"
    assert doc["model"] == xm.read_model_config(files["probs"]).describe() == spelled
    assert [(r["impl"], r["policy"]) for r in doc["results"]] == [("model", "mixed_float16")]
    # --policy does not rebuild the saved model
    again = _run(*args, "--impl", "model", "--mode", "eager", "--policy", "all", "--format", "json")
    assert [r["policy"] for r in json.loads(again.output)["results"]] == ["mixed_float16"]


def test_saved_logits_are_the_models_and_check_the_same(
    files: dict[str, Path], tmp_path: Path
) -> None:
    saved = tmp_path / "logits.npz"
    model = ("--model", files["probs"], "--mode", "eager", "--format", "json")
    first = _run(
        "check", "--inputs", files["x"], "--labels", files["y"], *model, "--save-logits", saved
    )
    with np.load(saved, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["logits"], _hand_logits(np.load(files["x"])))
        assert npz["logits"].dtype == np.float32
        np.testing.assert_array_equal(npz["labels"], np.load(files["y"]))
    assert [p.name for p in tmp_path.iterdir()] == ["logits.npz"]  # no temporary file left
    later = _run("check", saved, *model)
    assert later.exit_code == first.exit_code == 1
    models = [
        [r for r in json.loads(out.output)["results"] if r["impl"] == "model"]
        for out in (first, later)
    ]
    assert models[0] == models[1] and models[0]


def test_save_logits_leaves_no_file_when_terminated(files: dict[str, Path], tmp_path: Path) -> None:
    args = ("check", "--model", files["probs"], "--inputs", files["x"], "--labels", files["y"])
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_WRITING, *map(str, args), "--save-logits",
         str(tmp_path / "s.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert (done.returncode, done.stderr.splitlines()[-1]) == (143, "xentaudit: terminated")
    assert list(tmp_path.iterdir()) == []


def test_compare_audits_the_model_beside_the_zoo(files: dict[str, Path], tmp_path: Path) -> None:
    saved = tmp_path / "s.npz"
    np.savez(saved, logits=_hand_logits(np.load(files["x"]))[:4], labels=np.load(files["y"])[:4])
    result = _run(
        "compare", "--logits", saved, "--model", files["probs"], "--impl", "keras_cce_logits",
        "--mode", "eager", "--format", "json",
    )  # fmt: skip
    doc = json.loads(result.output)
    assert [(r["impl"], r["policy"]) for r in doc["results"]] == [
        ("keras_cce_logits", "float32"), ("model", "mixed_float16"),
    ]  # fmt: skip
    assert doc["model"].startswith("Softmax[mixed_float16]")


def test_a_failing_alternative_does_not_fail_the_run(files: dict[str, Path]) -> None:
    args = ("check", "--model", files["logits"], "--inputs", files["x"], "--labels", files["y"])
    result = _run(*args, "--mode", "eager", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    clipped = [r for r in doc["results"] if r["impl"] == "clipped"]
    assert "divergent" in clipped[0]["flags"]  # failing, but only an alternative
    assert doc["gate"] == ["model"] and doc["verdict"]["status"] == "pass"
    assert doc["verdict"]["alternatives"]["clipped"] == []  # the model fires nothing to remove
    # An explicit --fail-on judges every implementation, as without --model.
    assert _run(*args, "--mode", "eager", "--fail-on", "divergent").exit_code == 1


def test_a_smoothed_loss_is_graded_against_the_smoothed_labels(files: dict[str, Path]) -> None:
    """label_smoothing=0.1 through a float32 Softmax (Keras recovers the logits): the exact
    loss is -sum y' log softmax(x) with y' = 0.9 y + 0.1/3, here from mpmath at 50 digits, and
    the model's own loss on the same logits is real Keras with its smoothing."""
    import mpmath

    args = ("check", "--model", files["smoothed"], "--inputs", files["x"], "--labels", files["y"])
    result = _run(*args, "--mode", "eager", "--dtype", "float32", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    x, y = np.load(files["x"]), np.load(files["y"])
    logits = _hand_logits(x)
    mpmath.mp.dps = 50
    # The exact loss is that of the labels smoothed exactly, y' = 9/10 y + 1/30 in rationals
    # (the model's loss smooths the labels as given itself, in float32, as in training).
    smooth = [[mpmath.mpf(9) / 10 * (j == c) + mpmath.mpf(1) / 30 for j in range(CLASSES)]
              for c in y.tolist()]  # fmt: skip
    want = []
    for row, weights in zip(logits.tolist(), smooth, strict=True):
        lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row))
        want.append(mpmath.fsum(w * (lse - v) for w, v in zip(weights, row, strict=True)))
    model = next(r for r in doc["results"] if r["impl"] == "model")
    # The exact mean is the float64 reference's, within a few float64 ulps of the mean (~22):
    # 2^-48 relative.
    exact = float(mpmath.fsum(want) / len(want))
    assert abs(model["exact_mean"] - exact) <= 2**-48 * exact
    assert model["flags"] == [] and doc["verdict"]["status"] == "pass"
    keras_model = keras.saving.load_model(files["smoothed"])
    per_row = keras_model.loss.from_config({**keras_model.loss.get_config(), "reduction": None})
    real = per_row(tf.one_hot(y, CLASSES), keras_model.layers[-1](tf.constant(logits)))
    # The model's loss smooths the one-hot labels itself, as Keras does in training: its
    # per-row losses are those of the real call, bit for bit, and so are the means, both taken
    # in float64 (a sum of 22 float32 values spanning less than 2^29 is exact in float64).
    assert model["loss_mean"] == float(np.mean(np.asarray(real, np.float64)))
    # The sparse zoo losses cannot take smoothed labels: skipped, saying why.
    reasons = {s["impl"]: s["reason"] for s in doc["skipped"]}
    assert "label_smoothing=0.1" in reasons["tf_sparse_softmax_xent"]


def test_rows_the_model_ignores_are_left_out(files: dict[str, Path]) -> None:
    """SparseCategoricalCrossentropy(ignore_class=0): rows of class 0 have no loss and no
    gradient in Keras; check leaves them out, counts them, and reduces over the rest, as the
    real model's compute_loss does (its mean runs over the rows not ignored)."""
    args = ("check", "--model", files["ignoring"], "--inputs", files["x"], "--labels", files["y"])
    result = _run(*args, "--mode", "eager", "--format", "json")
    x, y = np.load(files["x"]), np.load(files["y"])
    doc = json.loads(result.output)
    kept = int(np.sum(y != 0))
    assert doc["ignored_rows"] == ROWS - kept
    model = next(r for r in doc["results"] if r["impl"] == "model")
    assert model["rows"] == kept
    keras_model = keras.saving.load_model(files["ignoring"])
    want = float(keras_model.compute_loss(x, y, keras_model(x), training=False))
    # a float32 mean of the kept losses in any order against our exact mean of the same float32
    # losses: 48 u relative (u = 2^-24)
    assert abs(model["loss_reduced"] - want) <= 48 * 2**-24 * want
    # The rows' numbers stay the file's: no flagged or worst row is one of class 0.
    assert all(y[w["row"]] != 0 for w in model["worst_rows"])
    # every row ignored, or no labels to tell which: refused, not a silent PASS
    np.save(files["folder"] / "zeros.npy", np.zeros(ROWS, np.int64))
    zeros = ("--labels", files["folder"] / "zeros.npy")
    every = _run("check", "--model", files["ignoring"], "--inputs", files["x"], *zeros)
    assert every.exit_code == 2 and "every row has the class the model's loss ignores" in (
        every.stderr
    )
    np.save(files["folder"] / "logits.npy", _hand_logits(x))
    unlabelled = _run("check", files["folder"] / "logits.npy", "--model", files["ignoring"])
    assert unlabelled.exit_code == 2 and "pass --labels" in unlabelled.stderr
    logits = files["folder"] / "logits.npy"
    compare = _run(
        "compare", "--model", files["ignoring"], "--logits", logits, "--labels", files["y"]
    )
    assert compare.exit_code == 2 and "which the model's loss ignores" in compare.stderr


def test_the_loss_is_reduced_as_the_model_reduces_it(files: dict[str, Path]) -> None:
    """reduction="sum": the scalar is the sum over the rows, the real model's compute_loss on
    the whole file as one batch; the exact one is the mpmath sum."""
    import mpmath

    args = ("check", "--model", files["summed"], "--inputs", files["x"], "--labels", files["y"])
    result = _run(*args, "--mode", "eager", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["reduction"] == "sum"
    model = next(r for r in doc["results"] if r["impl"] == "model")
    x, y = np.load(files["x"]), np.load(files["y"])
    logits = _hand_logits(x)
    mpmath.mp.dps = 50
    exact = mpmath.fsum(
        mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row)) - row[label]
        for row, label in zip(logits.tolist(), y.tolist(), strict=True)
    )
    # the exact mean times the row count: two float64 roundings, 2^-51 relative
    assert abs(model["exact_reduced"] - float(exact)) <= 2**-51 * float(exact)
    keras_model = keras.saving.load_model(files["summed"])
    want = float(keras_model.compute_loss(x, np.eye(CLASSES)[y], keras_model(x), training=False))
    # a float32 sum of 48 non-negative losses in any order against our exact sum of the same
    # float32 losses: 48 u relative (u = 2^-24)
    assert abs(model["loss_reduced"] - want) <= 48 * 2**-24 * want
    text = _run(*args, "--mode", "eager").output
    assert f"reduction: sum over the {ROWS} rows: model eager float32" in text


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("lambda", "the output layer"),
        ("custom", "the loss function my_loss is not mapped"),
    ],
)
def test_unsupported_models_and_ignored_rows_are_one_line_errors(
    files: dict[str, Path], case: str, message: str
) -> None:
    args = ("check", "--model", files[case], "--inputs", files["x"], "--labels", files["y"])
    result = _run(*args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--labels", "[0, 1]"), "--labels has 2 rows but --inputs has 48"),
        (("FILE.npy", "--labels", "y"), "FILE and --inputs both give logits"),
        ((), "--inputs needs --model (to compute the logits) and --labels"),
        (("--labels", "y", "--save-logits", "out.npy"), "name a .npz file"),
    ],
)
def test_bad_sources_are_one_line_errors(
    files: dict[str, Path], args: tuple[str, ...], message: str
) -> None:
    args = tuple(str(files["y"]) if a == "y" else a for a in args)
    model = ("--model", files["probs"]) if "--labels" in args else ()
    result = _run("check", *model, "--inputs", files["x"], *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


def test_check_needs_a_file_or_inputs() -> None:
    result = _run("check")
    assert result.exit_code == 2 and "missing FILE" in result.stderr
