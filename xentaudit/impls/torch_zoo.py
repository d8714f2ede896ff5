"""The PyTorch implementations and the autodiff runner. Import via ``impls.load_backend("torch")``.

Every implementation is ``fn(y, k, x) -> per-row losses``: ``y`` the dense label weights in the
logits' dtype, or None for hard labels, then ``k`` the int64 class of each row (None when there
are no classes). Gradients are what ``torch.autograd`` produces for that code; graph mode is
``torch.compile`` (TorchDynamo and the Inductor backend, which generates C++ for the CPU).

Torch keeps subnormal numbers on the CPU (it sets no flush-to-zero), where TensorFlow and XLA
flush them: a softmax probability underflows to 0 below 2^-150 here, below 2^-126 there.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable

import ml_dtypes
import numpy as np
import torch
import torch.nn.functional as F

from xentaudit.errors import ImplementationError
from xentaudit.impls import (
    Expired,
    Outcome,
    logits_shaped,
    outcome,
    per_row,
    time_limit,
    timed_out,
    user_code,
    user_loss,
)
from xentaudit.losses import NO_FOCUS, Focus

LossFn = Callable[[torch.Tensor | None, torch.Tensor | None, torch.Tensor], torch.Tensor]


def _dense(y: torch.Tensor | None, k: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The label weights: ``y`` as given, or the one-hot rows of the classes ``k``."""
    return y if y is not None else F.one_hot(k, x.shape[-1]).to(x.dtype)


def torch_cross_entropy(
    y: torch.Tensor | None,
    k: torch.Tensor | None,
    x: torch.Tensor,
    smoothing: float = 0.0,
    ignore: int = -100,
    reduction: str = "none",
) -> torch.Tensor:
    # Class-index targets for hard labels, probability targets (the dense weights) otherwise:
    # cross_entropy_loss in aten/src/ATen/native/LossNLL.cpp computes nll_loss_nd(log_softmax(x))
    # for the first, cross_entropy_loss_prob_target, -sum(log_softmax(x) * y), for the second;
    # with label_smoothing a, (1 - a) nll + a / C * -sum log_softmax(x) for class indices and
    # the targets y (1 - a) + a / C for probabilities, in the logits' dtype. Rows of class
    # ignore_index (-100 by default) get no loss, and reduction="mean" divides by the others.
    target = k if y is None else y
    return F.cross_entropy(
        x, target, reduction=reduction, label_smoothing=smoothing, ignore_index=ignore
    )


def torch_log_softmax_nll(
    y: torch.Tensor | None,
    k: torch.Tensor | None,
    x: torch.Tensor,
    ignore: int = -100,
    reduction: str = "none",
) -> torch.Tensor:
    return F.nll_loss(F.log_softmax(x, -1), k, reduction=reduction, ignore_index=ignore)


def torch_softmax_log(
    y: torch.Tensor | None, k: torch.Tensor | None, x: torch.Tensor
) -> torch.Tensor:
    return -(_dense(y, k, x) * torch.log(torch.softmax(x, -1))).sum(-1)


def torch_autocast_bf16(
    y: torch.Tensor | None,
    k: torch.Tensor | None,
    x: torch.Tensor,
    smoothing: float = 0.0,
    ignore: int = -100,
    reduction: str = "none",
) -> torch.Tensor:
    """``F.cross_entropy`` as bfloat16 mixed-precision training on the CPU computes it, on the
    logits rounded to bfloat16 (``LOGITS_AS``).

    Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` the model's last Linear (``linear``,
    ``addmm``, ``matmul``: the lower_precision_fp list of ``TORCH_LIBRARY_IMPL(aten,
    AutocastCPU, m)`` in aten/src/ATen/autocast_mode.cpp) emits the logits in bfloat16. On the
    CPU, ``cross_entropy_loss`` and ``nll_loss`` are in that file's fp32 list: autocast casts
    the bfloat16 logits (exactly) and floating targets to float32, and the loss computes and
    returns float32; ``log_softmax`` and ``softmax`` are in neither CPU list (CUDA's
    fp32_set_opt_dtype list does not apply). The gradient goes back through autocast's cast,
    rounded to bfloat16 as the Linear's backward receives it. Soft targets are given in
    float32, as a float32 data pipeline feeds them (float64 targets, which autocast does not
    cast, would make the loss float64).
    """
    with torch.autocast("cpu", dtype=torch.bfloat16):
        targets = None if y is None else y.to(torch.float32)
        return torch_cross_entropy(targets, k, x, smoothing, ignore, reduction)


# The sigmoid (binary, multi-label) losses: the row's loss is the mean over its labels, as a
# user's .mean(-1) of the elementwise losses (reduction="none") computes it.


def torch_bce_logits(
    y: torch.Tensor | None, k: torch.Tensor | None, x: torch.Tensor
) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(-1)


def torch_bce_sigmoid(
    y: torch.Tensor | None, k: torch.Tensor | None, x: torch.Tensor
) -> torch.Tensor:
    # binary_cross_entropy (aten/src/ATen/native/Loss.cpp) clamps each log to >= -100: a
    # sigmoid that rounded to 0 or 1 costs 100, not inf
    return F.binary_cross_entropy(torch.sigmoid(x), y, reduction="none").mean(-1)


IMPLS: dict[str, LossFn] = {
    fn.__name__: fn
    for fn in (
        torch_cross_entropy,
        torch_log_softmax_nll,
        torch_softmax_log,
        torch_autocast_bf16,
        torch_bce_logits,
        torch_bce_sigmoid,
    )
}
# The dtype the logits reach an implementation's loss in, when it is not theirs: the output
# dtype of the layer before it. Rounded eagerly, outside torch.compile's graph, as the Linear's
# output is a tensor in memory (inside one graph, Inductor would fuse the round trip through
# bfloat16 away: it does not emulate precision casts by default); the gradient comes back
# through the rounding, widened to the logits' dtype.
LOGITS_AS = {"torch_autocast_bf16": torch.bfloat16}


@functools.cache
def graph_unavailable() -> str | None:
    """Why ``torch.compile`` cannot run here, in one line, or None when it can: TorchDynamo
    supports this Python and Inductor finds the C++ compiler it generates CPU kernels for."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]}"
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:
        return f"torch.compile needs a C++ compiler (g++ or clang++) on the PATH: {exc}"
    return None


def _own_code(fn: Callable) -> Callable:
    """``fn`` with its own copy of its code object. TorchDynamo caches compiled graphs on the
    code object and, past ``recompile_limit`` (8) entries, stops compiling it; one copy per
    implementation and dtype keeps every dtype's graphs (and the size-1 specialisations of
    dynamic shapes) clear of that limit."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def _options(smoothing: float, ignore: int | None) -> dict[str, float | int]:
    """The keyword arguments of an implementation's own label ``smoothing`` and ``ignore``
    class (``Impl.smooths``, ``Impl.ignores``), those given."""
    options: dict[str, float | int] = {}
    if smoothing:
        options["smoothing"] = smoothing
    if ignore is not None:
        options["ignore"] = ignore
    return options


def loss_fn(name: str, smoothing: float = 0.0, ignore: int | None = None) -> tuple[LossFn, bool]:
    """The loss function registered under ``name`` (with its own label ``smoothing`` and
    ``ignore`` class arguments for those that take them, ``Impl.smooths``, ``Impl.ignores``), or
    the user's loss, and whether it is the user's."""
    user = user_loss(name)
    if user is not None:
        return lambda y, k, x: user(_dense(y, k, x), x), True
    fn = IMPLS[name]
    options = _options(smoothing, ignore)
    if not options:
        return fn, False
    return lambda y, k, x: fn(y, k, x, **options), False


# (name, dtype, label smoothing, ignored class) -> the compiled loss function
_GRAPH_CACHE: dict[tuple[str, str, float, int | None], LossFn] = {}


def _compiled(name: str, dtype: str, smoothing: float, ignore: int | None) -> LossFn:
    reason = graph_unavailable()
    if reason is not None:
        raise ImplementationError(f"--impl {name} (graph mode): {reason}; use --mode eager")
    key = (name, dtype, smoothing, ignore)
    if key not in _GRAPH_CACHE:
        fn, users = loss_fn(name, smoothing, ignore)
        # dynamic=True: one graph whatever the batch shape. fullgraph=True for the zoo, which has
        # no graph breaks: an error rather than a silent fall-back to eager; a user's loss may
        # break the graph, as torch.compile lets it by default.
        # A user's loss stays out of Inductor's on-disk FX graph cache: its compiled graph refers
        # to the module its file was loaded as (``_xentaudit_<stem>``), which no other process
        # has, so a built-in loss of the same graph that found it there warned with a traceback.
        options = {"fx_graph_cache": False} if users else None
        _GRAPH_CACHE[key] = torch.compile(
            _own_code(fn), dynamic=True, fullgraph=not users, options=options
        )
    return _GRAPH_CACHE[key]


def _step(
    fn: LossFn,
    y: torch.Tensor | None,
    k: torch.Tensor | None,
    x: torch.Tensor,
    scale: float,
    logits_as: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    loss = torch.as_tensor(fn(y, k, x if logits_as is None else x.to(logits_as)))
    # The scaling contract of every backend (see tf_zoo): the loss cast to float32 (float64
    # kept) times the scale, so the scale reaches a narrower loss's backward pass through the
    # cast, rounded to its dtype (2^16 is inf in float16). torch.amp.GradScaler.scale
    # multiplies the loss it is given: under autocast, a float32 loss.
    wide = loss if loss.dtype == torch.float64 else loss.to(torch.float32)
    scaled = wide * torch.tensor(scale, dtype=wide.dtype)
    if not scaled.requires_grad:
        return loss, None
    # Seeding with ones is the gradient of the summed loss without forming the sum.
    (grad,) = torch.autograd.grad(scaled, x, torch.ones_like(scaled), allow_unused=True)
    return loss.detach(), grad


def _run_user(
    name: str,
    fn: LossFn,
    y: torch.Tensor | None,
    k: torch.Tensor | None,
    x: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a user's loss; whatever goes wrong in their code is a one-line error, not a bug.

    In graph mode their Python runs while ``torch.compile`` traces it, inside this call too.
    """
    with user_code(f"--impl {name}: the loss", ImplementationError):
        loss, grad = _step(fn, y, k, x, scale)
    per_row(name, tuple(loss.shape), x.shape[0], loss.dtype)
    if grad is None:
        raise ImplementationError(
            f"--impl {name}: the loss has no gradient w.r.t. the logits; compute it with "
            "torch operations on the logits tensor"
        )
    logits_shaped(name, tuple(grad.shape), tuple(x.shape))
    return loss, grad


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` as a torch tensor of the same dtype and bits (numpy has no bfloat16 of its own:
    ml_dtypes' bfloat16 crosses as its 16 bits)."""
    a = np.ascontiguousarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def _array(t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array of the same dtype and bits (the inverse of ``_tensor``)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


@functools.cache
def flushes_subnormals() -> bool:
    """Whether torch flushes subnormal float32 results to zero on this CPU: exp(-100) is
    3.8e-44, a subnormal, or 0 (the CPU keeps them unless ``torch.set_flush_denormal``)."""
    return torch.exp(torch.tensor(-100.0, dtype=torch.float32)).item() == 0.0


def dtype_name(dtype: torch.dtype) -> str:
    """Torch's dtype as numpy and the rest of xentaudit name it ("torch.float32" -> "float32")."""
    return str(dtype).removeprefix("torch.")


def _own_mean(
    name: str,
    loss: torch.Tensor,
    y: torch.Tensor | None,
    k: torch.Tensor | None,
    x: torch.Tensor,
    smoothing: float,
    ignore: int | None,
) -> torch.Tensor:
    """The mean of per-row ``loss`` as torch reduces it: the implementation's own
    ``reduction="mean"`` where it ignores a class (the sum over the rows kept, divided by
    their number), ``Tensor.mean()`` of the per-row losses otherwise. Taken eagerly in both
    modes: compiling the reduced loss too would double torch.compile's time for one scalar."""
    if ignore is None:
        return loss.detach().mean()
    logits_as = LOGITS_AS.get(name)
    with torch.no_grad():
        given = x if logits_as is None else x.to(logits_as)
        return IMPLS[name](y, k, given, **_options(smoothing, ignore), reduction="mean")


def run(
    name: str,
    eps: float,
    mode: str,
    logits: np.ndarray,
    labels: np.ndarray | None,
    classes: np.ndarray | None,
    timeout: float | None = None,
    policy: str = "float32",
    loss_scale: float = 1.0,
    given: str = "logits",
    focus: Focus = NO_FOCUS,
    mean: bool = False,
    smoothing: float = 0.0,
    ignore: int | None = None,
) -> Outcome:
    """Run implementation ``name`` eagerly or compiled by ``torch.compile`` (``mode`` "graph");
    ``smoothing`` and ``ignore``: its own ``label_smoothing`` and ``ignore_index`` arguments
    (``Impl.smooths``, ``Impl.ignores``); its own mean is then its ``reduction="mean"``.

    ``logits`` and ``labels`` (dense label weights, or ``None`` for the hard labels
    ``classes``) are numpy arrays already in the audited dtype. The gradient is taken of
    ``loss_scale`` times the loss, held in float32 (float64 for a float64 loss) as training
    holds it, and comes back divided by ``loss_scale``, float16 and bfloat16 widened to
    float32. ``eps`` and ``policy`` (Keras' alone) do not apply. ``timeout``: seconds the run
    (its compilation included) may take, or None. Raises ``ImplementationError`` in graph mode
    when ``torch.compile`` cannot run here (``graph_unavailable``).
    """
    # No implementation of this backend takes probabilities (Impl.on_probabilities): `check`
    # refuses them with --input probabilities before anything runs. None is a focal loss
    # (torch has none; a user's focal loss computes its own factor): ``focus`` is unused.
    assert given == "logits", given
    x = _tensor(logits).requires_grad_(True)
    k = torch.from_numpy(np.asarray(classes, dtype=np.int64)) if classes is not None else None
    y = _tensor(labels) if labels is not None else None
    dtype = dtype_name(x.dtype)
    key = (name, dtype, smoothing, ignore)
    if mode == "graph":
        fn = _compiled(name, dtype, smoothing, ignore)
    else:
        fn = loss_fn(name, smoothing, ignore)[0]
    try:
        with time_limit(timeout):
            if user_loss(name) is None:
                loss, grad = _step(fn, y, k, x, loss_scale, LOGITS_AS.get(name))
            else:
                loss, grad = _run_user(name, fn, y, k, x, loss_scale)
            own = _own_mean(name, loss, y, k, x, smoothing, ignore) if mean else None
            result = outcome(_array(loss), _array(grad), dtype_name(loss.dtype), loss_scale, own)
    except Expired:
        _GRAPH_CACHE.pop(key, None)  # an interrupted compilation is not to be reused
        raise timed_out(name, dtype, mode, timeout) from None
    return result
