"""AuditCallback inside a real ``model.fit``: a flag fires once the logits pass the clip point.

The model: Dense(2) then Softmax on two well-separated Gaussian clusters, one-hot labels,
CategoricalCrossentropy, Adam with a short second-moment memory (beta_2=0.9) and a tiny epsilon,
so its steps stay near the learning rate while the gradient (about e^-gap) shrinks: the logit gap
grows by about one per epoch, from under 9 after epoch 1 past 16 around epoch 6 (plain SGD's steps
shrink with the gradient and would need thousands of epochs).

The audited sample is the first 64 training rows with their labels swapped (the class the model
learns not to predict: rows it is confidently wrong on, as mislabelled data is). For such a row
of two classes the exact loss is log(1 + e^g), g the logit of the predicted class minus the
other's. ``clipped`` clips p to [eps, 1 - eps] in float32 (eps = float32(1e-7)): on a row with
p_y < eps its loss is stuck at -log(eps) and its gradient is 0, while the exact gradient is
about 1, so ``grad-vanish`` (a default fail_on flag) fires exactly when the exact loss exceeds
CLIP = -ln(float32(1e-7)) = 16.1181, i.e. g > log(e^CLIP - 1) = CLIP - 1e-7.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import xentaudit  # noqa: E402
from xentaudit.errors import ConfigError  # noqa: E402
from xentaudit.keras_callback import MAX_ROWS, AuditCallback  # noqa: E402
from xentaudit.training import HEADROOM_STEPS  # noqa: E402

EPOCHS = 10
SAMPLE = 64
CLIP = -math.log(float(np.float32(1e-7)))  # the loss `clipped` is stuck at: 16.118...
# p_y is computed by a float32 softmax: a few ulps relative, i.e. a few 1e-7 in -log p_y; the
# band keeps rows (and grid scales) within 1e-3 of CLIP out of the exact comparisons.
BAND = 1e-3


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 2, 256)
    centers = np.array([[1.0, 1.0], [-1.0, -1.0]])
    x = (centers[classes] + 0.3 * rng.standard_normal((256, 2))).astype("float32")
    return x, np.eye(2, dtype="float32")[classes], classes


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2), keras.layers.Softmax()])
    model.compile(
        optimizer=keras.optimizers.Adam(0.1, beta_2=0.9, epsilon=1e-12),
        loss=keras.losses.CategoricalCrossentropy(),
    )
    return model


def _sample() -> tuple[np.ndarray, np.ndarray]:
    x, y, _ = _data()
    return x[:SAMPLE], y[:SAMPLE, ::-1].copy()  # the other class: confidently wrong rows


def _fit(callback: AuditCallback, epochs: int = EPOCHS) -> keras.callbacks.History:
    x, y, _ = _data()
    return _model().fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[callback])


def _exact(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row exact loss of two-class logits: log(1 + e^g), g = other logit - label's logit."""
    x = logits.astype(np.float64)
    k = labels.argmax(axis=1)
    g = x[np.arange(len(x)), 1 - k] - x[np.arange(len(x)), k]
    return np.logaddexp(0.0, g)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    x, y = _sample()
    # stop_training: the model's own loss never fires here (below), so fit runs every epoch
    callback = AuditCallback(
        x, y, save_dir=folder / "logits", log_dir=folder / "tb", stop_training=True
    )
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        history = _fit(callback)
    return callback, history, folder, stderr.getvalue()


def _saved(folder, epoch: int) -> np.ndarray:
    with np.load(folder / "logits" / f"epoch_{epoch:04d}.npz", allow_pickle=False) as f:
        return f["logits"]


def test_flag_fires_first_when_the_gap_passes_the_clip(run):
    callback, _, folder, _ = run
    _, labels = _sample()
    assert [r.epoch for r in callback.records] == list(range(1, EPOCHS + 1))
    fired = [r.flagged_rows["clipped"] > 0 for r in callback.records]
    assert any(fired) and not fired[0], "the run must start clean and end flagged"
    first = fired.index(True)
    assert callback.records[first].max_logit_gap > CLIP - BAND
    assert all(r.max_logit_gap < CLIP for r in callback.records[:first])
    for record in callback.records:
        exact = _exact(_saved(folder, record.epoch), labels)
        if np.any(np.abs(exact - CLIP) < BAND):
            continue  # a row on the edge: float32 rounding decides
        # every row of two classes whose exact loss passes CLIP is flagged, and only those
        assert record.flagged_rows["clipped"] == int(np.sum(exact > CLIP)), record.epoch
        # float64 reference of float32 logits: a mean of 64 terms, 64 * 2^-53 relative at most
        assert record.exact_loss == pytest.approx(exact.mean(), rel=1e-12)


def test_model_loss_and_fused_loss_stay_clean(run):
    callback, _, _, _ = run
    for record in callback.records:
        # Keras recovers the logits from a float32 Softmax layer's output (the loss is then
        # computed from logits): within the divergent tolerance, 9 float32 eps of the loss.
        assert record.flagged_rows["model"] == 0 and record.model_failing == ()
        assert record.flagged_rows["tf_softmax_xent"] == 0
        assert record.model_loss == pytest.approx(record.exact_loss, rel=9 * 2.0**-23)


def test_headroom_is_the_first_grid_scale_past_the_clip(run):
    callback, _, folder, _ = run
    _, labels = _sample()
    grid = [2.0 ** (k / 2) for k in range(HEADROOM_STEPS + 1)]
    checked = 0
    for record in callback.records:
        logits = _saved(folder, record.epoch).astype(np.float64)
        worst = [_exact(s * logits, labels).max() for s in grid]
        if any(abs(w - CLIP) < BAND for w in worst):
            continue
        expected = next((s for s, w in zip(grid, worst, strict=True) if w > CLIP), math.inf)
        assert record.headroom["clipped"] == expected, record.epoch
        checked += 1
    assert checked >= EPOCHS // 2


def test_history_keeps_numeric_records(run):
    callback, history, _, _ = run
    for key in (
        "xentaudit/exact_loss",
        "xentaudit/model_loss",
        "xentaudit/max_logit_gap",
        "xentaudit/clipped/flagged_rows",
        "xentaudit/clipped/headroom",
        "xentaudit/model/headroom",
    ):
        assert len(history.history[key]) == EPOCHS, key
        assert all(isinstance(v, float) for v in history.history[key])
    gaps = [r.max_logit_gap for r in callback.records]
    assert history.history["xentaudit/max_logit_gap"] == gaps


def test_one_stderr_line_per_new_flag(run):
    callback, _, _, stderr = run
    fired = {item for r in callback.records for item in r.failing}
    lines = stderr.strip().splitlines()
    assert len(lines) == len(fired) > 0
    for name, flag in fired:
        (line,) = [line for line in lines if f": {name} fired {flag}; " in line]
        # every one here is an alternative's (the model's own loss stays clean)
        assert name != "model" and line.endswith(" (an alternative, not the model's loss)")


def test_stop_training_ignores_the_alternatives_flags(run):
    # `clipped` fires (test_flag_fires_first_when_the_gap_passes_the_clip) while the model's own
    # loss stays clean: a callback with stop_training=True lets fit run every epoch.
    callback, history, _, _ = run
    assert callback.stop and any(r.failing for r in callback.records)
    assert len(history.epoch) == EPOCHS


def test_saved_logits_are_what_check_reads(run):
    callback, _, folder, _ = run
    first = next(r.epoch for r in callback.records if r.flagged_rows["clipped"])
    before = xentaudit.check_file(
        folder / "logits" / "epoch_0001.npz", impls=["clipped"], modes=["graph"]
    )
    after = xentaudit.check_file(
        folder / "logits" / f"epoch_{first:04d}.npz", impls=["clipped"], modes=["graph"]
    )
    assert before.exit_code(["grad-vanish"]) == 0
    assert after.exit_code(["grad-vanish"]) == 1


def test_the_save_folder_is_an_ema_trajectory(run):
    callback, _, folder, _ = run
    result = xentaudit.ema(folder / "logits", decays=[0.5], impls=())
    assert (result.steps, result.rows, result.classes) == (EPOCHS, SAMPLE, 2)
    (decay,) = result.decays
    for step, record in zip(decay.steps, callback.records, strict=True):
        # both exact float64 means of the same 64 rows
        assert step.raw_loss == pytest.approx(record.exact_loss, rel=1e-12)


def test_tensorboard_scalars_are_the_records(run):
    import tensorflow as tf

    callback, _, folder, _ = run
    (events,) = (folder / "tb").glob("events.out.tfevents.*")
    written = {}
    for event in tf.compat.v1.train.summary_iterator(str(events)):
        for value in event.summary.value:
            assert value.metadata.plugin_data.plugin_name == "scalars"
            written[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
    for record in callback.records:
        for key, expected in record.logs().items():
            # float32 scalars: the record rounded once to float32 (inf stays inf)
            assert written[key, record.epoch - 1] == float(np.float32(expected)), key


def test_stop_training_stops_at_the_models_first_flag():
    # Rows the model classifies right, zero-loss named in fail_on: the model's own loss (Keras
    # recovers the logits, so a float32 log-softmax) rounds log(1 + e^-g) to 0 once the margin g
    # passes about -ln(2^-24) = 16.6 while the exact loss is e^-g > 0; fit stops at that epoch.
    x, y, _ = _data()
    callback = AuditCallback(x[:SAMPLE], y[:SAMPLE], fail_on=["zero-loss"], stop_training=True)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        history = _fit(callback)
    assert callback.records[-1].model_failing == ("zero-loss",)
    assert not any(r.model_failing for r in callback.records[:-1])
    assert len(history.epoch) == callback.records[-1].epoch < EPOCHS
    (line,) = [line for line in stderr.getvalue().splitlines() if ": model fired " in line]
    assert line.endswith(f"(max logit gap {callback.records[-1].max_logit_gap:.4g})")


def test_every_two_audits_even_epochs_counted_from_one():
    x, y = _sample()
    callback = AuditCallback(x, y, every=2, impls=["tf_softmax_xent"])
    history = _fit(callback, epochs=4)
    assert [r.epoch for r in callback.records] == [2, 4]
    gaps = history.history["xentaudit/max_logit_gap"]
    assert math.isnan(gaps[0]) and math.isnan(gaps[2])
    assert gaps[1::2] == [r.max_logit_gap for r in callback.records]


def _ready(model: keras.Model | None = None, **options: object) -> AuditCallback:
    """A callback set up on a compiled model, as fit sets it up, without training."""
    x, y = _sample()
    callback = AuditCallback(x, y, **options)
    callback.set_model(_model() if model is None else model)
    callback.on_train_begin()
    return callback


def test_logits_layer_names_where_the_logits_come_from():
    default = _ready()
    dense = default.model.layers[0].name  # the Dense before the Softmax: the same logits
    named = _ready(default.model, logits_layer=dense)
    assert named.audit_epoch(1).max_logit_gap == default.audit_epoch(1).max_logit_gap
    with pytest.raises(ConfigError, match="logits_layer='nope' is not a layer"):
        _ready(default.model, logits_layer="nope")
    default.on_train_end()
    named.on_train_end()


def test_loss_replaces_the_compiled_one():
    smoothing = 0.1
    callback = _ready(loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing))
    assert callback.path.label_smoothing == smoothing
    record = callback.audit_epoch(1)
    callback.on_train_end()
    _, labels = _sample()
    logits = callback._logits(_sample()[0]).astype(np.float64)
    # two classes: -sum_j y'_j log softmax_j = y'_0 log(1 + e^(x1-x0)) + y'_1 log(1 + e^(x0-x1))
    # smoothed exactly (float64; the float32 labels times 0.9 would round them to float32)
    smoothed = labels.astype(np.float64) * (1 - smoothing) + smoothing / 2
    d = logits[:, 1] - logits[:, 0]
    exact = smoothed[:, 0] * np.logaddexp(0, d) + smoothed[:, 1] * np.logaddexp(0, -d)
    assert record.exact_loss == pytest.approx(exact.mean(), rel=1e-12)  # as above: 64 terms


def test_nan_logits_are_a_nan_flag_not_a_crash():
    callback = _ready()
    dense = callback.model.layers[0]
    dense.set_weights([np.full_like(w, np.nan) for w in dense.get_weights()])
    record = callback.audit_epoch(1)
    assert record.flagged_rows["model"] == SAMPLE
    assert ("model", "nan") in record.failing
    callback.on_train_end()


def test_too_many_rows_is_a_one_line_error():
    x = np.zeros((MAX_ROWS + 1, 2), dtype="float32")
    with pytest.raises(ConfigError) as error:
        AuditCallback(x, np.zeros(MAX_ROWS + 1, dtype="int64"))
    assert "\n" not in str(error.value) and str(MAX_ROWS) in str(error.value)


def test_impls_none_is_the_default_and_a_string_one_comma_list() -> None:
    from xentaudit.keras_callback import DEFAULT_IMPLS

    x, y = np.zeros((2, 3), np.float32), np.array([0, 1])
    assert AuditCallback(x, y, impls=None).impls == AuditCallback(x, y).impls == DEFAULT_IMPLS
    assert AuditCallback(x, y, impls="naive,log_softmax").impls == ("naive", "log_softmax")


def test_a_bad_loss_or_save_dir_is_refused_when_the_callback_is_made_not_inside_fit(
    tmp_path,
) -> None:
    # both raised from on_train_begin, inside model.fit, as a Keras ValueError and an OSError
    x, y = np.zeros((2, 3), np.float32), np.array([0, 1])
    with pytest.raises(ConfigError, match=r"^AuditCallback: loss='nope': .*; pass a Keras loss"):
        AuditCallback(x, y, loss="nope")
    taken = tmp_path / "a_file"
    taken.write_text("")
    with pytest.raises(ConfigError, match=r"^AuditCallback: save_dir=.* is a file; name a folder"):
        AuditCallback(x, y, save_dir=taken)
