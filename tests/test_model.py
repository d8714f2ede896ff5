"""A saved model's own loss path (xentaudit.model). Ground truth is the real model, built and
saved here: its forward pass ``model(X)`` and its Keras loss with ``reduction=None``, their
gradients taken by ``tf.GradientTape`` through the Dense that produces the logits; the logits
by hand from the saved weights. Nothing is copied from a run of xentaudit."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.losses import LossFunctionWrapper

from xentaudit import model as xm
from xentaudit.errors import InputError, XentauditError
from xentaudit.losses import LOSSES

ROWS, FEATURES, CLASSES = 16, 4, 3
MIXED = keras.DTypePolicy("mixed_float16")


def _sequential(*last: keras.layers.Layer) -> keras.Model:
    return keras.Sequential([keras.Input(shape=(FEATURES,)), *last])


def _functional(*layers: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input(shape=(FEATURES,))
    outputs = inputs
    for layer in layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs)


def _logits_dense(**kwargs: object) -> keras.layers.Dense:
    # Weights large enough that some probabilities are tiny: the clip matters.
    return keras.layers.Dense(
        CLASSES,
        name="logits",
        kernel_initializer=keras.initializers.RandomNormal(stddev=4.0, seed=1),
        bias_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=2),
        **kwargs,
    )


CCE = keras.losses.CategoricalCrossentropy
SCCE = keras.losses.SparseCategoricalCrossentropy
# compile() wraps a loss given as a string or a function in a LossFunctionWrapper, a Loss that
# computes in float32 (keras/src/trainers/compile_utils.py get_loss): so does the ground truth.
CCE_FN = LossFunctionWrapper(keras.losses.categorical_crossentropy, reduction=None)
SCCE_FN = LossFunctionWrapper(keras.losses.sparse_categorical_crossentropy, reduction=None)

# name -> (model builder, compiled loss, the per-row loss Keras computes, describe())
CASES: dict[str, tuple[Callable[[], keras.Model], object, Callable, str]] = {
    "softmax_layer_mixed": (
        lambda: _sequential(_logits_dense(), keras.layers.Softmax(dtype=MIXED)),
        CCE(label_smoothing=0.1),
        CCE(label_smoothing=0.1, reduction=None),
        "Softmax[mixed_float16] -> CategoricalCrossentropy(from_logits=False, label_smoothing=0.1)",
    ),
    "softmax_layer_float32": (
        lambda: _functional(_logits_dense(), keras.layers.Softmax()),
        "categorical_crossentropy",
        CCE_FN,
        "Softmax[float32] -> CategoricalCrossentropy(from_logits=False)",
    ),
    "dense_softmax": (
        lambda: _functional(_logits_dense(activation="softmax")),
        "sparse_categorical_crossentropy",
        SCCE_FN,
        "Dense(softmax)[float32] -> SparseCategoricalCrossentropy(from_logits=False)",
    ),
    "dense_softmax_mixed": (
        lambda: _sequential(_logits_dense(activation="softmax", dtype=MIXED)),
        keras.losses.categorical_crossentropy,
        CCE_FN,
        "Dense(softmax)[mixed_float16] -> CategoricalCrossentropy(from_logits=False)",
    ),
    "activation_softmax": (
        lambda: _sequential(_logits_dense(), keras.layers.Activation("softmax", dtype="float32")),
        SCCE(ignore_class=0),
        SCCE(ignore_class=0, reduction=None),
        "Activation(softmax)[float32] -> SparseCategoricalCrossentropy(from_logits=False, "
        "ignore_class=0)",
    ),
    "none": (
        lambda: _sequential(_logits_dense()),
        CCE(from_logits=True, reduction="sum"),
        CCE(from_logits=True, reduction=None),
        "Dense(linear)[float32] -> CategoricalCrossentropy(from_logits=True)",
    ),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[keras.Model, Path]]:
    out = {}
    for case, (_, compiled, _, _) in CASES.items():
        model = CASES[case][0]()
        model.compile(loss=compiled)
        path = tmp_path_factory.mktemp(case) / "m.keras"
        model.save(path)
        out[case] = (model, path)
    return out


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((ROWS, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, ROWS)


@pytest.mark.parametrize("case", CASES)
def test_reads_the_path_from_the_config(saved: dict, case: str) -> None:
    path = xm.read_model_config(saved[case][1])
    assert path.describe() == CASES[case][3]
    assert path.reduction == ("sum" if case == "none" else "sum_over_batch_size")


def _hand_logits(model: keras.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x @ W + b`` in float64 from the saved weights, rounded as the layer's compute dtype
    rounds its inputs and weights, and the bound ``sum |x_i w_i| + |b|`` of its terms."""
    dense = model.get_layer("logits")
    kernel, bias = dense.get_weights()
    dtype = np.dtype(dense.compute_dtype)
    x, kernel, bias = (np.asarray(a, dtype).astype(np.float64) for a in (x, kernel, bias))
    return x @ kernel + bias, np.abs(x) @ np.abs(kernel) + np.abs(bias)


@pytest.mark.parametrize("case", CASES)
def test_logits_are_the_pre_activation(saved: dict, data: tuple, case: str) -> None:
    model, path = saved[case]
    x, _ = data
    batches = list(xm.logits_from_inputs(path, x, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 5, 1]
    logits = np.concatenate(batches)
    dense = model.get_layer("logits")
    assert logits.dtype == np.dtype(dense.compute_dtype)
    exact, terms = _hand_logits(model, x)
    # A dot product of 4 terms plus the bias: at most 5 roundings of the running sum, each
    # within u of the terms' magnitude (Higham, Accuracy and Stability, eq. 3.5), and one more
    # for the result's own rounding: 6 u sum |terms|.
    unit = np.finfo(logits.dtype).eps / 2
    assert np.all(np.abs(logits - exact) <= 6 * unit * terms)


def test_logits_from_a_npy_file(saved: dict, data: tuple, tmp_path: Path) -> None:
    _, path = saved["dense_softmax"]
    x, _ = data
    np.save(tmp_path / "x.npy", x)
    # the same batches from either: a matrix product's rounding may depend on how many rows it
    # has (on an AVX2 CPU, oneDNN's kernels for 7 rows and for 16 differ in the last bit)
    from_file = np.concatenate(list(xm.logits_from_inputs(path, tmp_path / "x.npy", 7)))
    from_array = np.concatenate(list(xm.logits_from_inputs(path, x, 7)))
    np.testing.assert_array_equal(from_file, from_array)


def _truth(case: str, model: keras.Model, x: np.ndarray, classes: np.ndarray, run: Any) -> tuple:
    """Per-row losses of the real model on ``x`` and, row by row, their gradients w.r.t. its
    logits, computed by ``run`` (``tf.function``, or a plain call for eager): for one row,
    d loss / d bias of the Dense producing the logits is exactly d loss / d logits (the bias
    enters that row once; under mixed_float16 through an exact widening)."""
    per_row = CASES[case][2]
    y = np.eye(CLASSES, dtype=np.float32)[classes]
    bias = model.get_layer("logits").bias
    target = classes if "sparse" in CASES[case][3].lower() else y

    def forward_backward() -> tuple:
        with tf.GradientTape(persistent=True) as tape:
            losses = per_row(target, model(x, training=False))
            rows = [losses[i] for i in range(ROWS)]
        return losses, tf.stack([tape.gradient(row, bias) for row in rows])

    losses, grads = run(forward_backward)()
    return np.asarray(losses), np.asarray(grads)


@pytest.mark.parametrize("eagerly", [False, True], ids=["graph", "eager"])
@pytest.mark.parametrize("case", CASES)
def test_model_loss_is_the_models_own(
    saved: dict, data: tuple, case: str, eagerly: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bit for bit: the same Keras layer code and loss on the same logits, in the same dtypes,
    as the model trains: in a graph, as ``fit``'s ``tf.function`` (where Keras finds a float32
    Softmax's logits from the graph's op instead of the eager tensor's attribute), or eagerly
    where ``model.run_eagerly``. The logits must be the same mode's: where TensorFlow runs
    oneDNN (its default on CPUs with AVX512_VNNI, AVX512_BF16 or AMX), a mixed-precision
    Dense's logits in a graph differ from its eager ones by float16 rounding."""
    model, path = saved[case]
    monkeypatch.setattr(model, "run_eagerly", eagerly)
    run = (lambda f: f) if eagerly else tf.function
    x, classes = data
    model_path = xm.read_model_config(path)
    logits = tf.constant(xm.logits_model(model, model_path)(x))
    y = tf.one_hot(classes, CLASSES, dtype=logits.dtype)
    fn = xm.model_loss(model_path)

    def ours() -> tuple:
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = fn(y, tf.constant(classes, tf.int32), logits, None)
        return loss, tape.gradient(loss, logits)

    loss, grad = run(ours)()
    want_loss, want_grad = _truth(case, model, x, classes, run)
    np.testing.assert_array_equal(np.asarray(loss), want_loss)
    np.testing.assert_array_equal(np.asarray(grad, np.float32), want_grad)


def test_the_cli_s_logits_are_the_models_predictions(saved: dict, data: tuple) -> None:
    """``--inputs``: the logits of the saved model's predict function, batch by batch, as
    ``model.predict`` gives them (the same batch sizes: a matrix product's rounding may depend
    on its rows)."""
    model, path = saved["dense_softmax_mixed"]
    x, _ = data
    logits = np.concatenate(list(xm.logits_from_inputs(path, x, batch_size=5)))
    runner = xm.logits_runner(model, xm.read_model_config(path))
    np.testing.assert_array_equal(logits, runner.predict(x, batch_size=5, verbose=0))


@pytest.mark.parametrize("case", CASES)
def test_model_loss_reduces_to_the_compiled_loss(saved: dict, data: tuple, case: str) -> None:
    """The compiled model's own reduced loss (``model.compute_loss``) from the per-row losses:
    their sum, or mean over the rows not ignored (SparseCategoricalCrossentropy masks them)."""
    model, path = saved[case]
    x, classes = data
    model_path = xm.read_model_config(path)
    logits = tf.constant(np.concatenate(list(xm.logits_from_inputs(path, x))))
    y = tf.one_hot(classes, CLASSES, dtype=logits.dtype)
    rows = np.asarray(xm.model_loss(model_path)(y, tf.constant(classes), logits, None), np.float64)
    target = classes if model_path.sparse else np.asarray(y, np.float32)
    # in a graph, as fit computes it, on the model's own logits there
    want = float(tf.function(lambda: model.compute_loss(x, target, model(x, training=False)))())
    counted = (
        ROWS if model_path.ignore_class is None else np.sum(classes != model_path.ignore_class)
    )
    got = rows.sum() / (1 if model_path.reduction == "sum" else counted)
    # float32 sum of 16 non-negative losses in any order, and a division: 17 u relative.
    assert abs(got - want) <= 17 * 2.0**-24 * abs(got)


def test_smoothed_labels_follow_keras() -> None:
    y = np.eye(4)[[0, 3]]
    smooth = LOSSES["softmax"].smooth(y, 0.2)
    np.testing.assert_allclose(smooth[0], [0.85, 0.05, 0.05, 0.05], rtol=2**-52)
    # Keras' smoothed loss is plain cross-entropy against these labels: in float64, -sum y
    # log_softmax(x) of 4 classes agrees to a few ulp (2^-45 leaves ample room).
    x = np.random.default_rng(1).standard_normal((2, 4)) * 5
    keras_loss = CCE(from_logits=True, label_smoothing=0.2, reduction=None, dtype="float64")
    log_softmax = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    want = -(smooth * log_softmax).sum(axis=1)
    np.testing.assert_allclose(np.asarray(keras_loss(y, x)), want, rtol=2**-45)


def _refused(path: Path, *names: str) -> str:
    with pytest.raises(XentauditError) as info:
        xm.read_model_config(path)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    return message


def _save(model: keras.Model, tmp_path: Path, loss: object = "categorical_crossentropy") -> Path:
    if loss is not None:
        model.compile(loss=loss)
    model.save(tmp_path / "m.keras")
    return tmp_path / "m.keras"


def _my_loss(y: tf.Tensor, p: tf.Tensor) -> tf.Tensor:
    return keras.losses.categorical_crossentropy(y, p)


@pytest.mark.parametrize(
    ("build", "loss", "names"),
    [
        (lambda: _sequential(_logits_dense(activation="sigmoid")), None, ("Dense", "sigmoid")),
        (lambda: _sequential(keras.layers.Softmax(axis=0)), None, ("Softmax", "axis 0")),
        (lambda: _sequential(_logits_dense()), _my_loss, ("_my_loss",)),
        (lambda: _sequential(_logits_dense()), "binary_crossentropy", ("binary_crossentropy",)),
        (lambda: _sequential(_logits_dense()), keras.losses.CategoricalHinge(), ("Hinge",)),
        (lambda: _sequential(_logits_dense(), keras.layers.Dropout(0.1)), None, ("Dropout",)),
    ],
)
def test_unmapped_models_are_refused(tmp_path: Path, build: Callable, loss: object, names: tuple):
    message = _refused(_save(build(), tmp_path, loss or "categorical_crossentropy"), *names)
    assert "--impl file.py:fn" in message


def test_two_outputs_are_refused(tmp_path: Path) -> None:
    inputs = keras.Input(shape=(FEATURES,))
    model = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])
    _refused(_save(model, tmp_path, ["mse", "mse"]), "2 outputs", "single-output")


def test_a_model_saved_without_compile_is_refused(tmp_path: Path) -> None:
    _refused(_save(_sequential(_logits_dense()), tmp_path, None), "without compile", "--impl")


def test_a_lambda_is_refused_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deserializing a Lambda runs its saved bytecode: the refusal comes from the JSON alone."""
    marker = tmp_path / "ran"
    # The marker's path is a constant in the lambda's bytecode, which Keras saves marshalled.
    layer = keras.layers.Lambda(eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]"))
    path = _save(_sequential(_logits_dense(), layer), tmp_path)
    marker.unlink()
    monkeypatch.setattr(keras.saving, "load_model", None)
    monkeypatch.setattr(keras.saving, "deserialize_keras_object", None)
    _refused(path, "Lambda", "--impl file.py:fn")
    assert not marker.exists()


def test_broken_archives_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "text.keras").write_text("not a zip")
    _refused(tmp_path / "text.keras", "not a readable .keras archive")
    _refused(tmp_path / "missing.keras", "no such file")
    with zipfile.ZipFile(tmp_path / "bare.keras", "w") as archive:
        archive.writestr("model.weights.h5", b"")
    _refused(tmp_path / "bare.keras", "no config.json")
    with zipfile.ZipFile(tmp_path / "bad.keras", "w") as archive:
        archive.writestr("config.json", "{")
    _refused(tmp_path / "bad.keras", "not valid JSON")
    with zipfile.ZipFile(tmp_path / "big.keras", "w") as archive:
        archive.writestr("config.json", json.dumps({"pad": "x" * 100}))
    monkeypatch.setattr(xm, "MAX_CONFIG_BYTES", 64)
    _refused(tmp_path / "big.keras", "more than 64")


def test_a_model_alone_is_audited_with_no_other_implementation(
    saved: dict, data: tuple, tmp_path: Path
) -> None:
    """``impls=[]`` beside a model names nothing else to run: the model's loss still runs (an
    empty list is refused only where it would run nothing)."""
    from xentaudit.audit import audit
    from xentaudit.check import check_file

    _, path = saved["dense_softmax"]
    x, classes = data
    logits = np.concatenate(list(xm.logits_from_inputs(path, x)))
    result = audit(logits, classes, model=path, impls=[], modes=["eager"])
    assert [r.impl for r in result.results] == ["model"]
    np.save(tmp_path / "logits.npy", logits)
    checked = check_file(
        tmp_path / "logits.npy", labels=classes, model=path, impls=[], modes=["eager"]
    )
    assert [r.impl for r in checked.results] == ["model"]


def test_a_model_none_of_whose_runs_ran_fails_the_check_not_passes(
    saved: dict, data: tuple, tmp_path: Path
) -> None:
    """A sparse loss cannot take soft labels: the model's runs are skipped while the zoo's run,
    and the verdict, which judges the model alone, once passed on nothing."""
    from xentaudit.check import check_file

    _, path = saved["dense_softmax"]
    x, _ = data
    np.save(tmp_path / "logits.npy", np.concatenate(list(xm.logits_from_inputs(path, x))))
    soft = np.full((ROWS, CLASSES), 1 / CLASSES)
    with pytest.raises(InputError, match=r"^nothing could be audited \(model in "):
        check_file(tmp_path / "logits.npy", labels=soft, model=path, backends="tf", modes="eager")


def test_a_config_without_dtype_uses_the_global_policy() -> None:
    """Keras builds a layer saved with no dtype under the global policy (layers/layer.py), and
    compile() accepts a one-element list of losses, or the class name as a string."""
    config = {
        "class_name": "Sequential",
        "config": {
            "layers": [{"module": "keras.layers", "class_name": "Softmax", "config": {"name": "s"}}]
        },
        "compile_config": {"loss": ["SparseCategoricalCrossentropy"]},
    }
    path = xm.parse_model_config(config)
    assert path.policy is None
    assert path.describe() == "Softmax[global] -> SparseCategoricalCrossentropy(from_logits=False)"


@pytest.mark.parametrize(
    ("ignore", "message"),
    [(1.5, "ignore_class=1.5, not an integer"), (2**64, f"ignore_class={2**64}, outside int64")],
)
def test_an_ignore_class_no_label_can_hold_is_refused(ignore: object, message: str) -> None:
    # read from config.json alone: a class id is an int64 tensor in the loss
    config = {
        "class_name": "Sequential",
        "config": {
            "layers": [{"module": "keras.layers", "class_name": "Softmax", "config": {"name": "s"}}]
        },
        "compile_config": {
            "loss": {
                "module": "keras.losses",
                "class_name": "SparseCategoricalCrossentropy",
                "config": {"from_logits": False, "ignore_class": ignore},
            }
        },
    }
    with pytest.raises(InputError, match=message):
        xm.parse_model_config(config)


def test_importing_the_module_imports_no_tensorflow() -> None:
    code = "import sys, xentaudit.model; assert not {'keras', 'tensorflow'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_inputs_are_refused(saved: dict, tmp_path: Path) -> None:
    _, path = saved["none"]
    np.savez(tmp_path / "x.npz", x=np.zeros((2, FEATURES)))
    with pytest.raises(XentauditError, match=r"not a \.npy file of numbers"):
        xm.logits_from_inputs(path, tmp_path / "x.npz")
    with pytest.raises(XentauditError, match=r"refuses a batch of shape \(2, 5\)"):
        list(xm.logits_from_inputs(path, np.zeros((2, FEATURES + 1), np.float32)))
