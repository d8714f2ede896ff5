"""`xentaudit ema`: the cross-entropy of an EMA of the logits on a trajectory. Expected lags,
attenuations and flagged steps are closed forms derived here: for logits growing linearly,
z_t = z_0 + t v, the EMA is e_t = z_t - (d / (1 - d)) (1 - d^t) v."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit.cli import cli
from xentaudit.ema import ema
from xentaudit.reference import FLOAT64_METHOD


def _save(path: Path, logits: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, logits=logits, labels=labels)
    return path


def _linear(steps: int, slope: float) -> np.ndarray:
    """One row of 3 classes, label 0, whose middle logit grows by ``slope`` a step: the loss
    log(2 + e^(slope t)) grows strictly, so the lag of a loss curve is that of the logits."""
    z = np.zeros((steps, 1, 3))
    z[:, 0, 1] = slope * np.arange(steps)
    return z


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_constant_logits_have_no_lag_and_attenuate_by_one_minus_d(tmp_path: Path) -> None:
    z = np.tile(np.float32([[1.5, -0.5, 0.25]]), (12, 1, 1))
    result = ema(_save(tmp_path / "t.npz", z, np.array([2])), decays=(0.9, 0.5), impls=())
    for d in result.decays:
        # e_t = d z + (1 - d) z rounds back to z in float32 exactly: the same gradient
        assert d.lag == 0 and d.mean_cosine == pytest.approx(1, abs=1e-15)
        assert all(s.ema_loss == s.raw_loss for s in d.steps)
        assert d.mean_attenuation == pytest.approx(1 - d.decay, rel=1e-15)


@pytest.mark.parametrize("decay", [0.5, 0.75, 0.9])
def test_linear_logits_lag_by_d_over_one_minus_d(tmp_path: Path, decay: float) -> None:
    steps, slope = 200, 0.05
    z = _linear(steps, slope)
    (d,) = ema(_save(tmp_path / "t.npz", z, np.array([0])), decays=(decay,), impls=()).decays
    assert d.lag == round(decay / (1 - decay))  # 1, 3, 9 steps
    t = 150
    e = z[t, 0] - decay / (1 - decay) * (1 - decay**t) * np.array([0, slope, 0])
    y = np.array([1.0, 0.0, 0.0])
    g_raw, g_ema = _softmax(z[t, 0]) - y, _softmax(e) - y
    want = (1 - decay) * np.linalg.norm(g_ema) / np.linalg.norm(g_raw)
    # the EMA recursion in float64 against the closed form: a few ulps per step over 150 steps
    assert d.steps[t].attenuation == pytest.approx(want, rel=1e-10)
    cosine = g_raw @ g_ema / (np.linalg.norm(g_raw) * np.linalg.norm(g_ema))
    assert d.steps[t].cosine == pytest.approx(cosine, rel=1e-10)


def test_the_steps_where_the_ema_hides_keras_clip(tmp_path: Path) -> None:
    """keras_cce_probs clips p_0 = 1 / (2 + e^s) at eps = 1e-7 (float32): its loss caps at
    -log(eps) once s > log(1 / eps - 2) = 16.118, and it fires divergent and grad-vanish. The raw
    middle logit s = 0.5 t passes it at t = 33; the EMA's, 0.5 (t - 9 (1 - 0.9^t)), later."""
    steps, slope, d = 60, 0.5, 0.9
    z = _linear(steps, slope).astype(np.float32)
    cap = math.log(1 / float(np.float32(1e-7)) - 2)
    raw = {t for t in range(steps) if slope * t > cap}
    lagged = {t: slope * (t - d / (1 - d) * (1 - d**t)) for t in range(steps)}
    ema_fires = {t for t, s in lagged.items() if s > cap}
    # no step sits within 0.01 of the cap, where a tolerance could tip it either way
    assert all(abs(s - cap) > 0.01 for s in lagged.values())
    assert all(abs(slope * t - cap) > 0.01 for t in range(steps))
    result = ema(
        _save(tmp_path / "t.npz", z, np.array([0])), decays=(d,), impls="keras_cce_probs"
    )  # one string is one comma list, not its characters
    (decay,) = result.decays
    assert {s.step for s in decay.steps if s.hidden} == raw - ema_fires
    assert all(s.hidden == ("divergent", "grad-vanish") for s in decay.steps if s.hidden)
    assert not any(s.shown for s in decay.steps)


def test_impls_none_is_the_default(tmp_path: Path) -> None:
    from xentaudit.choices import EMA_IMPLS

    path = _save(tmp_path / "t.npz", _linear(2, 1.0), np.array([0]))
    # it once ran nothing and reported no flag, hidden or shown
    assert ema(path, decays=0.5, impls=None).impls == EMA_IMPLS


def test_a_lag_at_the_search_limit_is_a_bound_and_integer_logits_are_not_truncated(
    tmp_path: Path,
) -> None:
    # d = 0.99 trails by 99 steps, more than half of 60 steps: the lag found is the limit
    (d,) = ema(
        _save(tmp_path / "t.npz", _linear(60, 0.2), np.array([0])), decays=(0.99,), impls=()
    ).decays
    assert (d.lag, d.lag_limit) == (30, 30)
    # integer logits [0, 0] then [1, 0]: the EMA (1 - 0.5^t) is no integer and is not truncated
    z = np.zeros((4, 1, 2), np.int64)
    z[1:, 0, 0] = 1
    (half,) = ema(_save(tmp_path / "i.npz", z, np.array([1])), decays=(0.5,), impls=()).decays
    for s in half.steps:
        e0 = 1 - 0.5**s.step
        assert s.ema_loss == pytest.approx(math.log1p(math.exp(e0)), rel=1e-12)


def test_a_folder_of_steps_is_the_same_trajectory(tmp_path: Path) -> None:
    z = _linear(20, 0.3)
    whole = ema(_save(tmp_path / "t.npz", z, np.array([0])), decays=(0.75,), impls=())
    folder = tmp_path / "steps"
    folder.mkdir()
    for t in range(20):
        _save(folder / f"step{t:04d}.npz", z[t], np.array([0]))
    assert ema(folder, decays=(0.75,), impls=()).decays == whole.decays


def test_the_command_writes_json_and_refuses_bad_input(tmp_path: Path) -> None:
    path = _save(tmp_path / "t.npz", _linear(30, 0.2), np.array([0]))
    runner = CliRunner()
    out = runner.invoke(cli, ["ema", str(path), "--decay", "0.5", "--impl", "", "--format", "json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert (doc["command"], doc["steps"], doc["decays"][0]["lag"]) == ("ema", 30, 1)
    assert doc["reference_method"] == FLOAT64_METHOD  # the kernel where it is built
    table = runner.invoke(cli, ["ema", str(path), "--decay", "0.5", "--impl", ""])
    assert "decay 0.5: lags 1 steps" in table.output
    alone = ema(path, decays=0.5, impls=())  # one number is one decay
    assert [d.decay for d in alone.decays] == [0.5]
    both = runner.invoke(
        cli, ["ema", str(path), "--decay", "0.5,0.75", "--impl", "", "--format", "json"]
    )
    assert [d["lag"] for d in json.loads(both.output)["decays"]] == [1, 3]
    for value in ("1", "nan", "x"):
        bad = runner.invoke(cli, ["ema", str(path), "--decay", value])
        assert bad.exit_code == 2 and "--decay" in bad.stderr, value
    flat = _save(tmp_path / "flat.npz", np.zeros((4, 3)), np.array([0, 1, 2, 0]))
    refused = runner.invoke(cli, ["ema", str(flat), "--impl", ""])
    assert refused.exit_code == 2 and "a trajectory is (steps, rows, classes)" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, logits=_linear(3, 0.2))
    missing = runner.invoke(cli, ["ema", str(unlabelled), "--impl", ""])
    assert (missing.exit_code, missing.stderr) == (
        2,
        f"xentaudit: error: {unlabelled} has no array 'labels'; save the labels beside the "
        "logits\n",
    )  # ema has no --labels-key to point to


def test_the_api_and_the_command_default_to_the_same_implementations(tmp_path: Path) -> None:
    path = _save(tmp_path / "t.npz", _linear(3, 0.2), np.array([0]))
    command = CliRunner().invoke(cli, ["ema", str(path), "--decay", "0.5", "--format", "json"])
    assert command.exit_code == 0, command.output
    api = ema(path, decays=(0.5,))
    assert (
        api.impls
        == tuple(json.loads(command.output)["impls"])
        == (
            "tf_softmax_xent",
            "keras_cce_probs",
        )
    )
