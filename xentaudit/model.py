"""A saved Keras model's own loss path: read from its ``.keras`` archive, rebuilt, and fed logits.

``read_model_config`` reads only the archive's ``config.json`` (no Keras, no code, no pickle)
and derives the final activation, its dtype policy and the compiled loss (``ModelPath``).
``model_loss`` rebuilds that path from real Keras layers and losses as an implementation
``fn(labels, classes, logits, eps)``. ``logits_model`` and ``logits_from_inputs`` compute the
logits the final activation receives, from a model in memory or loaded in Keras' safe mode.
Keras and TensorFlow are imported inside the functions that need them.
"""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xentaudit.errors import InputError
from xentaudit.io import regular_file

INT64 = np.iinfo(np.int64)  # the range of a class id: labels go to the loss as int64

MAX_CONFIG_BYTES = 16 * 2**20  # a config.json larger than this is refused unread
MODEL_CLASSES = ("Sequential", "Functional")
# Policies whose layers compute in a float dtype (keras/src/dtype_policies/dtype_policy.py);
# quantized ones (int8_from_float32, ...) are refused.
FLOAT_POLICIES = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "mixed_float16",
    "mixed_bfloat16",
)
# Loss class -> the names compile() also accepts for it: the function form, and the class name
# as a string (keras/src/losses/__init__.py ALL_OBJECTS_DICT; trainers/compile_utils.get_loss).
LOSSES = {
    "CategoricalCrossentropy": "categorical_crossentropy",
    "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
}
ACTIVATIONS = ("softmax-layer", "dense-softmax", "activation-softmax", "none")
_SPELLED = {
    "softmax-layer": "Softmax",
    "dense-softmax": "Dense(softmax)",
    "activation-softmax": "Activation(softmax)",
}
_IMPL_HINT = "audit it with --impl file.py:fn"


@dataclass(frozen=True)
class ModelPath:
    """The loss path of a saved model: its final activation, then its compiled loss.

    ``policy`` is the final layer's dtype policy name, or None when the config saves none (Keras
    then builds the layer under the loading process's global policy, keras/src/layers/layer.py).
    ``reduction`` is the compiled one, for reporting: ``model_loss`` returns per-row losses.
    """

    layer: str  # the output layer's name
    layer_class: str  # its Keras class: Softmax, Dense, Activation
    activation: str  # one of ACTIVATIONS
    policy: str | None
    loss: str  # CategoricalCrossentropy or SparseCategoricalCrossentropy
    from_logits: bool = False
    label_smoothing: float = 0.0
    ignore_class: int | None = None
    axis: int = -1
    reduction: str | None = "sum_over_batch_size"

    @property
    def sparse(self) -> bool:
        """The loss takes integer classes, not label weights."""
        return self.loss == "SparseCategoricalCrossentropy"

    def describe(self) -> str:
        """The path as users read it, e.g. ``Softmax[mixed_float16] ->
        CategoricalCrossentropy(from_logits=False)``."""
        layer = _SPELLED.get(self.activation, f"{self.layer_class}(linear)")
        options = [f"from_logits={self.from_logits}"]
        if self.label_smoothing:
            options.append(f"label_smoothing={self.label_smoothing:g}")
        if self.ignore_class is not None:
            options.append(f"ignore_class={self.ignore_class}")
        return f"{layer}[{self.policy or 'global'}] -> {self.loss}({', '.join(options)})"


def read_model_config(path: str | Path) -> ModelPath:
    """The loss path of the ``.keras`` archive at ``path``, from its ``config.json`` alone.

    The archive layout is keras/src/saving/saving_lib.py (``config.json`` beside
    ``model.weights.h5``); only ``config.json`` is opened, at most ``MAX_CONFIG_BYTES``.
    """
    path = Path(path)
    regular_file(path, "--model", "a .keras file (model.save('model.keras'))")
    where = f"--model {_name(path)}"  # a name from the user: printable in one line
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise InputError(
                    f"{where}: config.json holds {info.file_size} bytes, more than "
                    f"{MAX_CONFIG_BYTES}; {_IMPL_HINT}"
                )
            with archive.open(info) as member:
                raw = member.read(MAX_CONFIG_BYTES + 1)
    except KeyError:
        raise InputError(
            f"{where}: the archive has no config.json; pass a Keras 3 .keras file"
        ) from None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise InputError(
            f"{where} is not a readable .keras archive ({exc}); save the model with "
            "model.save('model.keras')"
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InputError(
            f"{where}: config.json is larger than {MAX_CONFIG_BYTES} bytes; {_IMPL_HINT}"
        )
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{where}: config.json is not valid JSON ({what}); save the model again"
        ) from None
    return parse_model_config(config, where)


def parse_model_config(config: Any, where: str = "the model") -> ModelPath:
    """The loss path of a model config (the JSON of ``config.json``, or of
    ``keras.saving.serialize_keras_object(model)``); ``where`` starts every error message."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise InputError(f"{where}: config.json does not describe a Keras model; {_IMPL_HINT}")
    name = config.get("class_name")
    body = config["config"]
    if name not in MODEL_CLASSES or not isinstance(body.get("layers"), list):
        raise InputError(
            f"{where}: a {_name(name)} model (not Sequential or Functional) has no layer "
            f"list in its config; {_IMPL_HINT}"
        )
    layers = [layer for layer in body["layers"] if isinstance(layer, dict)]
    if len(layers) != len(body["layers"]):
        raise InputError(f"{where}: config.json has a malformed layer list; save it again")
    final = _sequential_output(layers, where) if name == "Sequential" else None
    if final is None:
        final = _functional_output(layers, body.get("output_layers"), where)
    activation, policy = _final_activation(final, where)
    return ModelPath(
        layer=str(final["config"].get("name")),
        layer_class=final["class_name"],
        activation=activation,
        policy=policy,
        **_compiled_loss(config.get("compile_config"), where),
    )


def _name(value: Any) -> str:
    """A name from the file (or a path), shown in one line: escaped when not printable, and
    cut at 200 characters (a config may hold a name of any length)."""
    text = str(value)
    text = text if text.isprintable() else ascii(text)
    return text if len(text) <= 200 else f"{text[:200]}..."


def _sequential_output(layers: list[dict], where: str) -> dict:
    real = [layer for layer in layers if layer.get("class_name") != "InputLayer"]
    if not real:
        raise InputError(f"{where}: the Sequential model has no layers; save a built model")
    return _layer_config(real[-1], where)


def _functional_output(layers: list[dict], outputs: Any, where: str) -> dict:
    """The layer named by ``output_layers``: ``[name, node, tensor]``, or a one-element list or
    dict of it (keras/src/models/functional.py ``get_config``)."""
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], list):
        outputs = outputs[0]
    if isinstance(outputs, list) and outputs and all(isinstance(o, list) for o in outputs):
        raise InputError(
            f"{where}: the model has {len(outputs)} outputs; audit a single-output model (one "
            f"keras.Model(inputs, output) per head) or {_IMPL_HINT}"
        )
    if not (isinstance(outputs, list) and len(outputs) == 3 and isinstance(outputs[0], str)):
        raise InputError(f"{where}: config.json names no output layer; save the model again")
    if outputs[1] != 0:
        raise InputError(
            f"{where}: the output layer {_name(outputs[0])} is shared (node {outputs[1]}); "
            f"{_IMPL_HINT}"
        )
    for layer in layers:
        if isinstance(layer.get("config"), dict) and layer["config"].get("name") == outputs[0]:
            return _layer_config(layer, where)
    raise InputError(f"{where}: the output layer {_name(outputs[0])} is not in config.json")


def _layer_config(layer: dict, where: str) -> dict:
    if not isinstance(layer.get("config"), dict) or not isinstance(layer.get("class_name"), str):
        raise InputError(f"{where}: config.json has a malformed layer; save the model again")
    return layer


def _builtin(layer: dict) -> bool:
    """A Keras layer, not a registered custom class of the same name."""
    module = layer.get("module")
    return (
        isinstance(module, str)
        and module.split(".")[0] == "keras"
        and (layer.get("registered_name") in (None, layer["class_name"]))
    )


def _activation_name(value: Any) -> str | None:
    """The name of a built-in activation as Dense and Activation serialize it: a string, or a
    ``function`` entry resolved in keras.activations (keras/src/activations/__init__.py)."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value
    if (
        isinstance(value, dict)
        and value.get("class_name") == "function"
        and isinstance(value.get("config"), str)
        and str(value.get("module", "")).split(".")[0] in ("keras", "builtins")
        and value.get("registered_name") in (None, "function")
    ):
        return value["config"]
    return None


def _final_activation(layer: dict, where: str) -> tuple[str, str | None]:
    """``(activation kind, dtype policy name)`` of the output layer."""
    kind = layer["class_name"]
    config = layer["config"]
    label = f"the output layer {_name(config.get('name'))} ({_name(kind)})"
    activation = _activation_name(config.get("activation"))
    if not _builtin(layer) or kind not in ("Softmax", "Dense", "Activation"):
        raise InputError(f"{where}: {label} is not a final activation xentaudit maps; {_IMPL_HINT}")
    if kind == "Softmax":
        axis = config.get("axis", -1)
        if axis not in (-1, [-1]):
            raise InputError(
                f"{where}: {label} normalizes over axis {_name(axis)}; only axis=-1 (the "
                f"classes last) is audited; {_IMPL_HINT}"
            )
        found = "softmax-layer"
    elif activation in ("softmax", "linear"):
        found = {"softmax": f"{kind.lower()}-softmax", "linear": "none"}[activation]
    else:
        spelled = _name(activation) if activation is not None else "a custom activation"
        raise InputError(
            f"{where}: {label} applies {spelled}; only softmax or none is mapped; {_IMPL_HINT}"
        )
    return found, _policy(config.get("dtype"), label, where)


def _policy(dtype: Any, label: str, where: str) -> str | None:
    """The layer's dtype policy name as Keras 3 serializes it: a DTypePolicy config or a string
    (keras/src/dtype_policies/__init__.py ``get``); None when absent (the global policy)."""
    if dtype is None:
        return None
    name = dtype
    if isinstance(dtype, dict) and dtype.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        name = (
            dtype.get("config", {}).get("name") if isinstance(dtype.get("config"), dict) else None
        )
    if name not in FLOAT_POLICIES:
        raise InputError(
            f"{where}: {label} has the dtype policy {_name(name if name else dtype)}; only "
            f"{', '.join(FLOAT_POLICIES)} are audited; {_IMPL_HINT}"
        )
    return name


def _compiled_loss(compiled: Any, where: str) -> dict[str, Any]:
    """ModelPath's loss fields from ``compile_config`` (keras/src/trainers/trainer.py
    ``get_compile_config``; the loss as keras/src/saving/serialization_lib.py writes it)."""
    if not isinstance(compiled, dict) or compiled.get("loss") is None:
        raise InputError(
            f"{where}: the model was saved without compile(), so it has no loss; "
            f"compile it before model.save, or {_IMPL_HINT}"
        )
    loss = compiled["loss"]
    if isinstance(loss, (list, dict)) and len(loss) == 1:
        loss = next(iter(loss.values())) if isinstance(loss, dict) else loss[0]
    functions = {function: cls for cls, function in LOSSES.items()}
    if isinstance(loss, str) and (loss in LOSSES or loss in functions):
        return {"loss": functions.get(loss, loss)}
    if isinstance(loss, dict) and loss.get("class_name") == "function":
        name = loss.get("config")
        if name in functions:
            return {"loss": functions[name]}
        raise InputError(f"{where}: the loss function {_name(name)} is not mapped; {_IMPL_HINT}")
    if isinstance(loss, dict) and loss.get("class_name") in LOSSES and _builtin(loss):
        config = loss.get("config") if isinstance(loss.get("config"), dict) else {}
        fields = {
            "loss": loss["class_name"],
            "from_logits": config.get("from_logits", False),
            "axis": config.get("axis", -1),
            "reduction": config.get("reduction", "sum_over_batch_size"),
        }
        if "label_smoothing" in config:
            fields["label_smoothing"] = config["label_smoothing"]
        if "ignore_class" in config:
            fields["ignore_class"] = config["ignore_class"]
        _check_loss(fields, where)
        return fields
    shown = loss.get("class_name") if isinstance(loss, dict) else loss
    raise InputError(f"{where}: the loss {_name(shown)} is not mapped; {_IMPL_HINT}")


def _check_loss(fields: dict[str, Any], where: str) -> None:
    label = f"the loss {fields['loss']}"
    if not isinstance(fields["from_logits"], bool):
        raise InputError(f"{where}: {label} has a malformed from_logits; save the model again")
    if fields["axis"] != -1:
        raise InputError(
            f"{where}: {label} has axis={_name(fields['axis'])}; only axis=-1 is audited; "
            f"{_IMPL_HINT}"
        )
    smoothing = fields.get("label_smoothing", 0.0)
    if (
        isinstance(smoothing, bool)
        or not isinstance(smoothing, (int, float))
        or not (0 <= smoothing <= 1)
    ):
        raise InputError(f"{where}: {label} has label_smoothing={_name(smoothing)}, not in [0, 1]")
    ignore = fields.get("ignore_class")
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)):
        raise InputError(f"{where}: {label} has ignore_class={_name(ignore)}, not an integer")
    if ignore is not None and not INT64.min <= ignore <= INT64.max:
        raise InputError(
            f"{where}: {label} has ignore_class={ignore}, outside int64; save the model again"
        )
    if fields["reduction"] is not None and not isinstance(fields["reduction"], str):
        raise InputError(f"{where}: {label} has a malformed reduction; save the model again")


def model_loss(path: ModelPath) -> Callable[[Any, Any, Any, Any], Any]:
    """The model's loss path as ``fn(labels, classes, logits, eps) -> per-row losses``.

    The activation is a real Keras layer under the layer's own policy (Softmax:
    layers/activations/softmax.py; Activation: layers/activations/activation.py); a Dense
    applies ``keras.activations.softmax`` to its output in its compute dtype
    (layers/core/dense.py ``call``), so here it is cast to that dtype first. The loss is the
    Keras class from the saved config with ``reduction=None`` (losses/losses.py); it computes in
    ``keras.config.floatx()`` as the saved one does. ``eps`` is unused (Keras clips with
    ``keras.config.epsilon()``).
    """
    import keras

    dtype = None if path.policy is None else keras.DTypePolicy(path.policy)
    config: dict[str, Any] = {"from_logits": path.from_logits, "reduction": None}
    if path.sparse:
        config["ignore_class"] = path.ignore_class
    else:
        config["label_smoothing"] = path.label_smoothing
    loss = keras.losses.deserialize({"class_name": path.loss, "config": config})
    activate: Callable[[Any], Any]
    if path.activation == "softmax-layer":
        activate = keras.layers.Softmax(axis=-1, dtype=dtype)
    elif path.activation == "activation-softmax":
        activate = keras.layers.Activation("softmax", dtype=dtype)
    elif path.activation == "dense-softmax":
        compute = (dtype or keras.config.dtype_policy()).compute_dtype
        activate = lambda x: keras.activations.softmax(keras.ops.cast(x, compute))  # noqa: E731
    else:
        activate = lambda x: x  # noqa: E731
    if path.sparse:
        return lambda y, classes, x, eps: loss(classes, activate(x))
    return lambda y, classes, x, eps: loss(y, activate(x))


def logits_model(model: Any, path: ModelPath) -> Callable[[np.ndarray], np.ndarray]:
    """``batch -> logits``: the input of ``model``'s final activation (for a Dense with softmax,
    its pre-activation output; ``logits_runner``), as ``model`` computes it with
    ``training=False`` (``predicting_like``). Works on a model in memory (a training
    callback)."""
    return predicting_like(logits_runner(model, path), model)


def predicting_like(runner: Any, model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``runner.predict_on_batch`` with ``training=False``, run as ``model`` runs: in Keras'
    predict function, a ``tf.function`` unless ``model.run_eagerly``, compiled by XLA where
    ``model.jit_compile`` (keras/src/backend/tensorflow/trainer.py ``make_predict_function``),
    as ``model.predict`` and, in the same graph, ``model.fit`` compute it. Where TensorFlow
    runs oneDNN, a mixed-precision layer's output in a graph differs from its eager one (its
    bias added before the float16 rounding): the logits training sees are the graph's."""
    runner.run_eagerly = model.run_eagerly
    runner.jit_compile = model.jit_compile
    return runner.predict_on_batch


def logits_runner(model: Any, path: ModelPath) -> Any:
    """A Keras model from ``model``'s inputs to the input of its final activation.

    A Softmax or Activation layer's input tensor is a Functional graph node; a Dense's
    pre-activation comes from a linear twin of it (its config with ``activation="linear"`` and
    its weights), so the same Dense code computes ``x @ kernel + bias`` under its policy and
    ``model`` itself is never changed.
    """
    import keras

    final = model.get_layer(path.layer)
    if path.activation == "dense-softmax":
        config = {**final.get_config(), "activation": "linear", "name": f"{final.name}_logits"}
        twin = keras.layers.Dense.from_config(config)
        output = twin(final.input)
        twin.set_weights(final.get_weights())
    elif path.activation == "none":
        output = final.output
    else:
        output = final.input
    return model_to(model, output)


def model_to(model: Any, output: Any) -> Any:
    """A Keras model from ``model``'s inputs to ``output``, one of its graph's tensors."""
    import keras

    # One input as a tensor, not a one-element list: the structure the model was built with.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, output)


def logits_from_inputs(
    keras_path: str | Path,
    inputs: str | Path | np.ndarray | Iterable[np.ndarray],
    batch_size: int = 1024,
) -> Iterator[np.ndarray]:
    """The logits of the saved model on ``inputs``, one batch at a time, in the dtype the final
    activation receives them.

    The model is loaded with ``keras.saving.load_model(safe_mode=True, compile=False)``
    (saving/saving_api.py) after ``read_model_config`` has mapped its path. ``inputs``: a
    ``.npy`` file (memory-mapped, never unpickled), an array (sliced into ``batch_size`` rows),
    or an iterable of batches (run as given). Loading happens here, before the first batch.
    """
    path = read_model_config(keras_path)
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: pass a positive number of rows")
    import keras

    try:
        model = keras.saving.load_model(keras_path, safe_mode=True, compile=False)
    except Exception as exc:  # a file Keras refuses is the user's to fix, not a bug here
        lines = str(exc).strip().splitlines()
        raise InputError(
            f"--model {_name(keras_path)}: Keras could not load it in safe mode "
            f"({type(exc).__name__}: {lines[0] if lines else ''}); {_IMPL_HINT}"
        ) from None
    return _run(logits_model(model, path), _batches(inputs, batch_size))


def _run(
    run: Callable[[np.ndarray], np.ndarray], batches: Iterator[np.ndarray]
) -> Iterator[np.ndarray]:
    for batch in batches:
        try:
            logits = run(batch)
        except ValueError as exc:  # Keras' own check of the batch against the model's input
            lines = str(exc).strip().splitlines()
            raise InputError(
                f"--inputs: the model refuses a batch of shape {np.shape(batch)} "
                f"({lines[0] if lines else 'ValueError'}); pass what the model was trained on"
            ) from None
        yield logits


def _batches(
    inputs: str | Path | np.ndarray | Iterable[np.ndarray], batch_size: int
) -> Iterator[np.ndarray]:
    if isinstance(inputs, (str, Path)):
        inputs = _rows_of(inputs, "--inputs", "the model's inputs")
    if isinstance(inputs, np.ndarray):
        # np.array copies one batch out of the memory map: one batch in memory at a time.
        return (np.array(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size))
    return iter(inputs)


def write_npz(
    stream: BinaryIO, logits: Iterator[np.ndarray], rows: int, labels: np.ndarray
) -> None:
    """Write ``logits`` (batches of ``rows`` rows in all) and ``labels`` to ``stream`` as an
    uncompressed ``.npz`` with members ``logits`` and ``labels``, one batch in memory at a time.

    ``np.savez`` needs whole arrays; here each member is a ``.npy`` header (numpy/lib/format.py,
    its shape known from the first batch and ``rows``) followed by the batches' bytes, streamed
    into a zip64 member.
    """
    first = next(logits)
    dtype = first.dtype
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("logits.npy", "w", force_zip64=True) as member:
            shape = (rows, *first.shape[1:])
            np.lib.format.write_array_header_2_0(
                member,
                {
                    "descr": np.lib.format.dtype_to_descr(dtype),
                    "fortran_order": False,
                    "shape": shape,
                },
            )
            for batch in itertools.chain([first], logits):
                member.write(np.ascontiguousarray(batch, dtype=dtype).tobytes())
        with archive.open("labels.npy", "w", force_zip64=True) as member:
            # A memory map is written a buffer at a time (numpy/lib/format.py write_array).
            np.lib.format.write_array(member, labels, allow_pickle=False)


def _rows_of(path: str | Path, option: str, what: str) -> np.ndarray:
    """The ``.npy`` file ``path`` given as ``option`` (``what`` it should hold), memory-mapped,
    never unpickled: an array of numbers with a row axis."""
    regular_file(Path(path), option, "a .npy file")
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        loaded = exc
    if not isinstance(loaded, np.ndarray) or loaded.ndim == 0 or loaded.dtype.kind not in "biuf":
        raise InputError(
            f"{option} {_name(path)}: not a .npy file of numbers with a row axis; save {what} "
            "with np.save"
        )
    return loaded


def save_logits(
    keras_path: str | Path,
    inputs: str | Path,
    labels: str | Path | np.ndarray,
    stream: BinaryIO,
    batch_size: int = 1024,
) -> None:
    """Write the logits of the saved model on the ``.npy`` ``inputs`` (``logits_from_inputs``)
    and ``labels`` (a ``.npy`` file or an array, one per input row) to ``stream`` as an ``.npz``
    that ``check`` reads (``write_npz``), one batch in memory at a time. Row counts are checked
    before the model is loaded."""
    rows = len(_rows_of(inputs, "--inputs", "the model's inputs"))
    if rows == 0:
        raise InputError(f"--inputs {_name(inputs)} has no rows; pass at least one input")
    if not isinstance(labels, np.ndarray):
        labels = _rows_of(labels, "--labels", "the labels")
    if labels.ndim == 0 or len(labels) != rows:
        raise InputError(
            f"--labels has {len(labels) if labels.ndim else 0} rows but --inputs has {rows}; "
            "pass one label per input row"
        )
    write_npz(stream, logits_from_inputs(keras_path, inputs, batch_size), rows, labels)
