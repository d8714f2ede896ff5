"""What the cross-entropy of an exponential moving average of the logits costs, on the user's own
training trajectory: the logits of the same rows saved at successive steps.

For a decay d the EMA is e_0 = z_0, e_t = d e_{t-1} + (1 - d) z_t. At every step the exact loss
of the raw logits z_t and of e_t (the float64 reference), the gradient that reaches the current
logits through the EMA loss, (1 - d) (softmax(e_t) - y) (de_t/dz_t = (1 - d)), its size against
the raw gradient softmax(z_t) - y (the attenuation), the cosine between the two directions, and
the lag: the whole number of steps k at which the EMA loss best matches the raw loss k steps
earlier (least mean absolute difference). On logits growing linearly, z_t = z_0 + t v, the EMA
trails by d / (1 - d) steps once d^t is negligible: e_t = z_t - (d / (1 - d)) (1 - d^t) v.
With implementations named, each runs on both, and the steps at which the EMA hides a failing
flag the raw logits raise (or shows one they do not) are listed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xentaudit.choices import EMA_IMPLS, names_given, numbers_given
from xentaudit.errors import ConfigError, InputError
from xentaudit.flags import FAILING
from xentaudit.io import as_float, open_arrays, prepare
from xentaudit.losses import LOSSES
from xentaudit.reference import cross_entropy
from xentaudit.results import SCHEMA_VERSION, to_json

MAX_LAG = 1000  # steps; a lag search beyond this is no question of stability
MAX_TRAJECTORY_ENTRIES = 2**26  # steps x rows x classes held at once (512 MiB of float64)


@dataclass(frozen=True)
class EmaStep:
    """One step of one decay."""

    step: int
    raw_loss: float  # exact mean loss of the raw logits
    ema_loss: float  # exact mean loss of the EMA logits
    attenuation: float  # |(1 - d) g(e_t)| / |g(z_t)| (Frobenius norms over the rows)
    cosine: float  # <g(z_t), g(e_t)> / (|g(z_t)| |g(e_t)|)
    hidden: tuple[str, ...] = ()  # failing flags the raw logits raise and the EMA does not
    shown: tuple[str, ...] = ()  # failing flags the EMA raises and the raw logits do not


@dataclass(frozen=True)
class EmaDecay:
    """One decay over the whole trajectory, and its summary."""

    decay: float
    lag: int | None  # steps by which the EMA loss trails the raw loss (best match); None: the
    # losses are not finite
    lag_limit: int  # the largest lag searched: a lag equal to it may be larger
    mean_attenuation: float
    mean_cosine: float
    steps: tuple[EmaStep, ...]


@dataclass(frozen=True)
class Ema:
    """Everything one ``ema`` call measured."""

    path: str
    steps: int
    rows: int
    classes: int
    impls: tuple[str, ...]
    decays: tuple[EmaDecay, ...]
    # "float64" (the compiled kernel) or "float64-numpy"; a default, as Check's and Sweep's, for
    # an Ema made by hand
    reference_method: str = "float64"

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION, **to_json(self)}  # type: ignore[dict-item]


def read_trajectory(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``logits`` (steps, rows, classes) and ``labels`` (rows,) or (rows, classes) from a
    ``.npz``, or from a folder of per-step ``.npz`` files (sorted by name) of ``logits`` (rows,
    classes) and the same ``labels``. Read as `check` reads files: never unpickled."""
    if path == "":  # Path("") is the current folder
        raise ConfigError("an empty trajectory name; name a .npz file or a folder of them")
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputError(f"{path} holds no .npz files; save one per step (logits, labels)")
        steps, labels = [], None
        for f in files:
            if sum(s.size for s in steps) > MAX_TRAJECTORY_ENTRIES:
                raise InputError(
                    f"{path} holds more than {MAX_TRAJECTORY_ENTRIES} logits; sample fewer rows "
                    "or steps"
                )
            x, y = _read(f)
            if x.ndim != 2:
                raise InputError(f"{f} has logits of shape {x.shape}; one step is (rows, classes)")
            if labels is not None and not np.array_equal(y, labels):
                raise InputError(f"{f} has other labels than {files[0]}; a trajectory is one set")
            steps.append(x)
            labels = y
        if len({s.shape for s in steps}) > 1:
            raise InputError(f"the steps in {path} differ in shape; save the same rows each step")
        return np.stack(steps), labels  # type: ignore[return-value]
    x, y = _read(path)
    if x.ndim != 3:
        raise InputError(
            f"{path} has logits of shape {x.shape}; a trajectory is (steps, rows, classes)"
        )
    return x, y


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = open_arrays(path, None, "logits", None)
    if labels is None:
        raise InputError(f"{path} has no array 'labels'; save the labels beside the logits")
    entries = math.prod(logits.shape)
    if entries > MAX_TRAJECTORY_ENTRIES:
        raise InputError(
            f"{path} holds {entries} logits, more than {MAX_TRAJECTORY_ENTRIES}; sample fewer "
            "rows or steps"
        )
    return logits.read(), labels.read()


def _gradients(x: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """The exact mean loss of the rows ``x`` and their exact gradients (float64)."""
    ref = cross_entropy(x, labels, method="float64")
    return float(np.mean(ref.loss + ref.loss_lo)), ref.grad


def _lag_limit(steps: int) -> int:
    """The largest lag searched: half the trajectory (so that a long lag cannot win on a few
    steps), at most ``MAX_LAG``."""
    return min(MAX_LAG, steps // 2)


def _lag(raw: np.ndarray, ema: np.ndarray) -> int | None:
    """The k in [0, ``_lag_limit``] minimising mean |ema[t] - raw[t - k]| over t >= k; None
    when a loss is not finite (no distance means anything then)."""
    if not (np.isfinite(raw).all() and np.isfinite(ema).all()):
        return None
    most = _lag_limit(len(raw))
    errors = [np.mean(np.abs(ema[k:] - raw[: len(raw) - k])) for k in range(most + 1)]
    return int(np.argmin(errors))


def _mean(values: list[float]) -> float:
    """The mean of the finite ones; NaN when none is (no warning)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _failing(impls: Sequence[str], x: np.ndarray, labels: np.ndarray) -> set[str]:
    if not impls:
        return set()
    from xentaudit.audit import audit

    result = audit(x, labels, impls=impls, modes=("eager",), dtypes=(x.dtype.name,))
    return {f for r in result.results for f in r.flags if f in FAILING}


def ema(
    path: str | Path,
    decays: Iterable[float] = (0.9, 0.99, 0.999),
    impls: Iterable[str] | str | None = EMA_IMPLS,
) -> Ema:
    """Measure the EMA-of-logits cross-entropy on the trajectory in ``path``
    (``read_trajectory``) for each decay in (0, 1); ``impls`` (names) also run on the raw and
    the EMA logits of every step, in the logits' dtype, eagerly, to list the failing flags the
    EMA hides or shows. The EMA is computed in float64 and rounded to the logits' dtype."""
    decays = numbers_given(decays, "--decay must be numbers in (0, 1)")  # one number: one decay
    for d in decays:
        if not 0 < d < 1:  # NaN fails too
            raise ConfigError(f"--decay must lie in (0, 1), got {d:g}")
    names = names_given(impls, "impls", EMA_IMPLS, empty_ok=True)  # a string: a comma list
    z, labels = read_trajectory(path)
    steps, rows, classes = z.shape
    if labels.shape not in ((rows,), (rows, classes)):
        raise InputError(
            f"labels of shape {labels.shape} do not fit {rows} rows of {classes} classes: pass "
            f"({rows},) classes or ({rows}, {classes}) label weights"
        )
    prepare(z.reshape(steps * rows, classes), np.tile(labels, (steps,) + (1,) * (labels.ndim - 1)))
    z = as_float(z)  # integer logits would truncate the EMA: it is rounded to this dtype
    dtype = z.dtype
    raw = [_gradients(z[t], labels) for t in range(steps)]
    raw_flags = [_failing(names, z[t], labels) for t in range(steps)]
    out = []
    for d in decays:
        e = z[0].astype(np.float64)
        records, ema_losses = [], []
        for t in range(steps):
            if t:
                with np.errstate(invalid="ignore"):  # -inf (masked) logits stay -inf
                    e = d * e + (1 - d) * z[t].astype(np.float64)
            rounded = e.astype(dtype)
            loss, g_ema = _gradients(rounded, labels)
            raw_loss, g_raw = raw[t]
            n_raw, n_ema = np.linalg.norm(g_raw), np.linalg.norm(g_ema)
            attenuation = (1 - d) * n_ema / n_raw if n_raw else math.nan
            cosine = float(np.sum(g_raw * g_ema) / (n_raw * n_ema)) if n_raw and n_ema else math.nan
            flags = _failing(names, rounded, labels)
            records.append(
                EmaStep(
                    t,
                    raw_loss,
                    loss,
                    float(attenuation),
                    cosine,
                    tuple(sorted(raw_flags[t] - flags)),
                    tuple(sorted(flags - raw_flags[t])),
                )
            )
            ema_losses.append(loss)
        raw_losses = np.array([r[0] for r in raw])
        out.append(
            EmaDecay(
                d,
                _lag(raw_losses, np.array(ema_losses)),
                _lag_limit(steps),
                _mean([r.attenuation for r in records]),
                _mean([r.cosine for r in records]),
                tuple(records),
            )
        )
    method = LOSSES["softmax"].float64_method  # the one ``_gradients`` runs
    return Ema(str(path), steps, rows, classes, names, tuple(out), method)
