"""Audit a Keras model's cross-entropy during training: ``AuditCallback`` for ``model.fit``.

At the end of every ``every``-th epoch the callback computes the model's logits on a fixed
sample (the input of its final softmax, ``xentaudit.model.logits_model``), audits them with
``xentaudit.audit`` (the model's own compiled loss path as the implementation ``model``, beside
a few reference implementations), and records what it found in the epoch's ``logs`` (so
Keras' ``History`` keeps it), on ``callback.records``, in TensorBoard and on stderr.

Importing this module imports Keras (and TensorFlow); ``import xentaudit`` does not import it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from xentaudit import impls as zoo
from xentaudit.audit import audit
from xentaudit.errors import ConfigError
from xentaudit.flags import FAILING, FLAGS
from xentaudit.model import ModelPath, logits_model, parse_model_config
from xentaudit.results import Audit

MAX_ROWS = 4096  # sample rows audited per epoch: the exact reference is per row, and runs here
# Three ways a loss breaks as logits grow: never (the fused one), clipping p at eps (the Keras
# recipe by hand: keras_cce_probs clips only eagerly, a graph recovers the logits), exp overflow.
DEFAULT_IMPLS = ("tf_softmax_xent", "clipped", "naive")
# The row flags `check` fails on by default (xentaudit/flags.py CHECK_FAIL_ON): every failing
# one but grad-wrong, which fails only when named.
DEFAULT_FAIL_ON = tuple(name for name in FAILING if name != "grad-wrong")
# Headroom grid: s = 2^(k/2), k = 0..HEADROOM_STEPS (1 to 256 for 16 steps).
HEADROOM_STEPS = 16
PREFIX = "xentaudit/"


@dataclass(frozen=True)
class EpochRecord:
    """What one audited epoch found (``epoch`` counts from 1, as Keras' progress bar does).

    ``flags`` are every flag each implementation fired (``ImplResult.flags``);
    ``flagged_rows`` the number of sample rows on which one of ``fail_on`` fired; ``headroom``
    the smallest logit scale factor s of the grid 2^(k/2), k = 0..16, at which auditing s times
    the logits fires one of ``fail_on`` (1.0: it fires already; inf: not within the grid).
    Implementations the audit skipped (e.g. a sparse one on soft labels) are absent.
    """

    epoch: int
    exact_loss: float  # exact mean loss of the sample's logits (float64 reference)
    model_loss: float  # mean of the per-row losses the model's own loss path computes
    max_logit_gap: float  # max over rows of (max logit - min finite logit)
    flags: dict[str, tuple[str, ...]]
    flagged_rows: dict[str, int]
    headroom: dict[str, float]
    seconds: float  # wall time of this audit (logits, audit, headroom, files)
    failing: tuple[tuple[str, str], ...] = field(default=())  # (impl, flag): fail_on flags fired

    def logs(self) -> dict[str, float]:
        """The record as the numeric ``logs`` entries Keras keeps (``xentaudit/...``)."""
        out = {
            f"{PREFIX}exact_loss": self.exact_loss,
            f"{PREFIX}model_loss": self.model_loss,
            f"{PREFIX}max_logit_gap": self.max_logit_gap,
        }
        for name, count in self.flagged_rows.items():
            out[f"{PREFIX}{name}/flagged_rows"] = float(count)
        for name, factor in self.headroom.items():
            out[f"{PREFIX}{name}/headroom"] = factor
        return out


class AuditCallback(keras.callbacks.Callback):
    """Audit the model's cross-entropy on a fixed sample at the end of every ``every``-th epoch.

    Args:
        x: the sample's inputs, at most ``MAX_ROWS`` rows (as ``model`` takes them).
        y: its labels, as the compiled loss takes them (one-hot rows or integer classes).
        every: audit epochs ``every``, ``2 * every``, ... counted from 1 (Keras' "Epoch 1/N").
        loss: a Keras loss (object, name or config) to audit instead of the compiled one.
        fail_on: the flags that count as failures (warned about, stop training, headroom).
        stop_training: set ``model.stop_training`` when a ``fail_on`` flag fires.
        log_dir: write the numeric records as TensorBoard scalars there (step: Keras' epoch).
        save_dir: save each audited epoch's sample logits there as ``epoch_0001.npz``
            (``logits``, ``labels``), which ``xentaudit check`` and ``xentaudit ema`` read.
        logits_layer: take the logits from this layer's output instead of the input of the
            final softmax.
        impls: reference implementations audited beside ``model`` (the model's own loss).
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        every: int = 1,
        loss: Any = None,
        fail_on: Iterable[str] = DEFAULT_FAIL_ON,
        stop_training: bool = False,
        log_dir: str | Path | None = None,
        save_dir: str | Path | None = None,
        logits_layer: str | None = None,
        impls: Iterable[str] = DEFAULT_IMPLS,
    ) -> None:
        super().__init__()
        self.x = np.asarray(x)
        self.y = np.asarray(y)
        rows = len(self.x) if self.x.ndim else 0
        if not 0 < rows <= MAX_ROWS:
            raise ConfigError(
                f"AuditCallback: the sample has {rows} rows; pass 1 to {MAX_ROWS} rows (a "
                "sample of the data: the audit runs at the end of every audited epoch)"
            )
        if (len(self.y) if self.y.ndim else 0) != rows:
            raise ConfigError(
                f"AuditCallback: y has {len(self.y) if self.y.ndim else 0} rows but x has {rows}; "
                "pass one label per row"
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"AuditCallback: every={every!r}; pass a positive whole number")
        self.fail_on = (fail_on,) if isinstance(fail_on, str) else tuple(fail_on)
        unknown = [f for f in self.fail_on if f not in FLAGS]
        if unknown:
            raise ConfigError(
                f"AuditCallback: unknown flag {unknown[0]!r} in fail_on; choose from "
                f"{', '.join(FLAGS)}"
            )
        impls = [impls] if isinstance(impls, str) else impls
        names = [name for name in impls if name != zoo.MODEL]  # `model` is always audited
        self.impls = zoo.parse_impls(names) if names else ()
        self.every = every
        self.loss = loss
        self.stop = stop_training
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.logits_layer = logits_layer
        self.records: list[EpochRecord] = []
        self.path: ModelPath | None = None
        self._seen: set[tuple[str, str]] = set()
        self._writer: Any = None

    # -- Keras hooks (keras/src/callbacks/callback.py) ------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Map the compiled model's loss path once (``parse_model_config`` of
        ``keras.saving.serialize_keras_object(model)``, which carries ``compile_config``:
        keras/src/saving/serialization_lib.py ``get_build_and_compile_config``)."""
        config = keras.saving.serialize_keras_object(self.model)
        if self.loss is not None:
            loss = keras.losses.serialize(keras.losses.get(self.loss))
            config = {**config, "compile_config": {"loss": loss}}
        self.path = parse_model_config(config, "AuditCallback: the model")
        if self.logits_layer is None:
            self._logits = logits_model(self.model, self.path)
        else:
            names = [layer.name for layer in self.model.layers]
            if self.logits_layer not in names:
                raise ConfigError(
                    f"AuditCallback: logits_layer={self.logits_layer!r} is not a layer of the "
                    f"model; choose from {', '.join(names)}"
                )
            layer = self.model.get_layer(self.logits_layer)
            inputs = self.model.inputs[0] if len(self.model.inputs) == 1 else self.model.inputs
            runner = keras.Model(inputs, layer.output)
            self._logits = lambda batch: runner(batch, training=False).numpy()
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        if self.log_dir is not None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Audit when ``epoch + 1`` (Keras passes 0-based epochs) is a multiple of ``every``.

        The entries go into ``logs`` itself: ``CallbackList.on_epoch_end`` hands one dict to
        every callback in order, and appends ``History`` and ``ProgbarLogger`` after the
        user's callbacks (keras/src/callbacks/callback_list.py ``_add_default_callbacks``), so
        both see them. Every entry is a float (the progress bar averages them,
        keras/src/utils/progbar.py); epochs not audited get NaN so that each
        ``history.history`` list stays aligned with ``history.epoch``.
        """
        number = epoch + 1
        if number % self.every:
            if logs is not None:
                logs.update(dict.fromkeys(self._keys(), math.nan))
            return
        record = self.audit_epoch(number)
        self.records.append(record)
        entries = record.logs()
        if logs is not None:
            logs.update(dict.fromkeys(self._keys(), math.nan))
            logs.update(entries)
        if self._writer is not None:
            self._scalars(entries, epoch)
        for item in record.failing:
            if item not in self._seen:
                self._seen.add(item)
                name, flag = item
                print(
                    f"xentaudit: epoch {number}: {name} fired {flag}; "
                    f"{record.flagged_rows.get(name, 0)} of {len(self.x)} sample rows fail "
                    f"(max logit gap {record.max_logit_gap:.4g})",
                    file=sys.stderr,
                )
        if self.stop and record.failing:
            self.model.stop_training = True

    def _scalars(self, entries: dict[str, float], step: int) -> None:
        """Write ``entries`` as TensorBoard scalars at ``step`` (Keras' 0-based epoch, as its
        TensorBoard callback uses, keras/src/callbacks/tensorboard.py ``on_epoch_end``).

        ``tf.summary.scalar`` needs the tensorboard package installed; this writes the same
        record without it: ``tf.summary.write`` of a float32 tensor with the ``scalars``
        plugin's metadata, as tensorboard/plugins/scalar/summary_v2.py ``scalar`` does (its
        metadata.py: plugin name "scalars", empty content, the scalar data class).
        """
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DataClass.DATA_CLASS_SCALAR,
        )
        with self._writer.as_default():
            for key, value in entries.items():
                tf.summary.write(key, tf.constant(value, tf.float32), step, metadata=metadata)
        self._writer.flush()

    # -- the audit -------------------------------------------------------------------------------

    def _keys(self) -> list[str]:
        names = (*self.impls, zoo.MODEL)
        return [
            f"{PREFIX}exact_loss",
            f"{PREFIX}model_loss",
            f"{PREFIX}max_logit_gap",
            *(f"{PREFIX}{n}/flagged_rows" for n in names),
            *(f"{PREFIX}{n}/headroom" for n in names),
        ]

    def _audit(self, logits: np.ndarray) -> Audit:
        """One audit of ``logits`` in their own dtype, in the mode ``fit`` runs the model in
        (graph unless ``model.run_eagerly``), ``model`` under its own dtype policy."""
        assert self.path is not None
        policy = zoo.model_policy(self.path)
        return audit(
            logits,
            self.y,
            impls=(*self.impls, zoo.MODEL),
            dtypes=(logits.dtype.name,),
            modes=("eager",) if self.model.run_eagerly else ("graph",),
            policies=(policy if policy in zoo.POLICIES else "float32",),
            model=self.path,
        )

    def _failing(self, result: Audit) -> dict[str, tuple[str, ...]]:
        """Implementation -> the ``fail_on`` flags it fired."""
        wanted = set(self.fail_on)
        return {r.impl: tuple(f for f in r.flags if f in wanted) for r in result.results}

    def audit_epoch(self, number: int) -> EpochRecord:
        """Audit the sample's logits now and return the record of epoch ``number``."""
        started = time.perf_counter()
        logits = np.asarray(self._logits(self.x))
        logits = logits.reshape(-1, logits.shape[-1])
        if self.save_dir is not None:
            np.savez(self.save_dir / f"epoch_{number:04d}.npz", logits=logits, labels=self.y)
        wide = logits.astype(np.float64)
        broken = int(np.sum((np.isnan(wide) | (wide == np.inf)).any(axis=1)))
        if broken:  # what audit refuses as input: every loss of such a row is NaN
            return self._broken(number, broken, time.perf_counter() - started)
        with np.errstate(invalid="ignore"):
            finite = np.where(np.isfinite(wide), wide, np.nan)
            gap = float(np.nanmax(np.nanmax(finite, axis=1) - np.nanmin(finite, axis=1)))
        result = self._audit(logits)
        fired = self._failing(result)
        wanted = set(self.fail_on)
        by_impl = {r.impl: r for r in result.results}
        flagged = {
            name: sum(1 for row in r.row_flags if wanted.intersection(row))
            for name, r in by_impl.items()
        }
        model = by_impl.get(zoo.MODEL)
        reference = result.results[0].reference if result.results else math.nan
        return EpochRecord(
            epoch=number,
            exact_loss=reference,
            model_loss=model.loss if model is not None else math.nan,
            max_logit_gap=gap,
            flags={name: r.flags for name, r in by_impl.items()},
            flagged_rows=flagged,
            headroom=self._headroom(logits, fired),
            seconds=time.perf_counter() - started,
            failing=tuple((name, f) for name, flags in fired.items() for f in flags),
        )

    def _broken(self, number: int, rows: int, seconds: float) -> EpochRecord:
        """The record of an epoch whose logits hold NaN or +inf on ``rows`` rows (the model
        has diverged): no audit, every implementation counted as firing ``nan`` on them."""
        names = (*self.impls, zoo.MODEL)
        failing = ("nan",) if "nan" in self.fail_on else ()
        return EpochRecord(
            epoch=number,
            exact_loss=math.nan,
            model_loss=math.nan,
            max_logit_gap=math.nan,
            flags=dict.fromkeys(names, ("nan",)),
            flagged_rows=dict.fromkeys(names, rows if failing else 0),
            headroom=dict.fromkeys(names, 1.0 if failing else math.inf),
            seconds=seconds,
            failing=tuple((name, flag) for name in names for flag in failing),
        )

    def _headroom(self, logits: np.ndarray, fired: dict[str, tuple[str, ...]]) -> dict[str, float]:
        """Per implementation, the smallest s = 2^(k/2), k = 0..HEADROOM_STEPS, at which
        auditing s times the logits (scaled in float64, rounded to their dtype) fires a
        ``fail_on`` flag; 1.0 if the logits themselves fire one, inf if none in the grid.

        A bisection over k for each implementation, the audits of each k shared between them:
        it assumes an implementation that fails at a scale fails at every larger one (clipping,
        underflow and overflow all get worse as logits grow), so it costs at most 2 + 4 audits
        per epoch while the bisections agree (and 4 more per implementation where they part),
        instead of 17. Scaled logits that overflow the dtype (finite ones becoming inf) count
        as failing every implementation.
        """
        cache: dict[int, dict[str, bool]] = {0: {n: bool(f) for n, f in fired.items()}}
        wide = logits.astype(np.float64)

        def fails(k: int) -> dict[str, bool]:
            if k not in cache:
                with np.errstate(over="ignore"):  # an overflow is the finding, just below
                    scaled = (wide * 2.0 ** (k / 2)).astype(logits.dtype)
                if (np.isinf(scaled) & np.isfinite(wide)).any():
                    cache[k] = dict.fromkeys(fired, True)
                else:
                    cache[k] = {n: bool(f) for n, f in self._failing(self._audit(scaled)).items()}
            return cache[k]

        out: dict[str, float] = {}
        for name in fired:
            if fails(0)[name]:
                out[name] = 1.0
                continue
            if not fails(HEADROOM_STEPS).get(name, False):
                out[name] = math.inf
                continue
            low, high = 0, HEADROOM_STEPS  # passes at low, fails at high
            while high - low > 1:
                middle = (low + high) // 2
                if fails(middle).get(name, False):
                    high = middle
                else:
                    low = middle
            out[name] = 2.0 ** (high / 2)
        return out
