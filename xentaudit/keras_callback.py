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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from xentaudit import impls as zoo
from xentaudit.audit import audit
from xentaudit.choices import names_given
from xentaudit.errors import ConfigError
from xentaudit.flags import fail_on_flags
from xentaudit.model import (
    ModelPath,
    logits_model,
    model_to,
    parse_model_config,
    predicting_like,
)
from xentaudit.results import Audit
from xentaudit.training import DEFAULT_FAIL_ON, PREFIX, EpochRecord, record

MAX_ROWS = 4096  # sample rows audited per epoch: the exact reference is per row, and runs here
# Three ways a loss breaks as logits grow: never (the fused one), clipping p at eps (the Keras
# recipe by hand: keras_cce_probs clips only eagerly, a graph recovers the logits), exp overflow.
DEFAULT_IMPLS = ("tf_softmax_xent", "clipped", "naive")


class AuditCallback(keras.callbacks.Callback):
    """Audit the model's cross-entropy on a fixed sample at the end of every ``every``-th epoch.

    Args:
        x: the sample's inputs, at most ``MAX_ROWS`` rows (as ``model`` takes them).
        y: its labels, as the compiled loss takes them (one-hot rows or integer classes).
        every: audit epochs ``every``, ``2 * every``, ... counted from 1 (Keras' "Epoch 1/N").
        loss: a Keras loss (object, name or config) to audit instead of the compiled one.
        fail_on: the flags that count as failures (warned about, stop training, headroom).
        stop_training: set ``model.stop_training`` when the model's own loss (``model``) fires
            a ``fail_on`` flag (the ``impls`` beside it are alternatives: theirs do not stop it).
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
        impls: Iterable[str] | str | None = DEFAULT_IMPLS,
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
        self.fail_on = fail_on_flags(fail_on, "AuditCallback's fail_on")
        given = names_given(impls, "impls", DEFAULT_IMPLS, empty_ok=True)  # a comma list
        names = [name for name in given if name != zoo.MODEL]  # `model` is always audited
        self.impls = zoo.parse_impls(names) if names else ()
        self.every = every
        self.loss = loss
        self.stop = stop_training
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.save_dir = None if save_dir is None else Path(save_dir)
        if self.save_dir is not None and self.save_dir.exists() and not self.save_dir.is_dir():
            raise ConfigError(f"AuditCallback: save_dir={str(save_dir)!r} is a file; name a folder")
        if loss is not None:  # refused here, not from inside fit
            try:
                keras.losses.get(loss)
            except ValueError as exc:
                raise ConfigError(
                    f"AuditCallback: loss={loss!r}: {exc}; pass a Keras loss"
                ) from None
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
            output = self.model.get_layer(self.logits_layer).output
            self._logits = predicting_like(model_to(self.model, output), self.model)
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
                whose = "" if name == zoo.MODEL else " (an alternative, not the model's loss)"
                print(
                    f"xentaudit: epoch {number}: {name} fired {flag}; "
                    f"{record.flagged_rows.get(name, 0)} of {len(self.x)} sample rows fail "
                    f"(max logit gap {record.max_logit_gap:.4g}){whose}",
                    file=sys.stderr,
                )
        if self.stop and record.model_failing:
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

    def audit_epoch(self, number: int) -> EpochRecord:
        """Audit the sample's logits now and return the record of epoch ``number``."""
        logits = np.asarray(self._logits(self.x))
        logits = logits.reshape(-1, logits.shape[-1])
        if self.save_dir is not None:
            np.savez(self.save_dir / f"epoch_{number:04d}.npz", logits=logits, labels=self.y)
        return record(
            number, logits, self._audit, (*self.impls, zoo.MODEL), zoo.MODEL, self.fail_on
        )
