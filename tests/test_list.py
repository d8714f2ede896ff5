"""`xentaudit list`: one registry describes every built-in implementation, and the README's
"## Implementations" table says exactly what `list` says."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from xentaudit.cli import cli, list_cell
from xentaudit.impls import CLIPS, KERAS_DEFAULT_EPSILON, REGISTRY

README = Path(__file__).parent.parent / "README.md"
COLUMNS = (
    "name", "summary", "loss", "backend", "family", "takes", "labels", "dtypes", "clip", "smoothing"
)  # fmt: skip


def listed(*args: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["list", "--format", "json", *args], catch_exceptions=False)
    assert result.exit_code == 0 and result.stderr == ""
    doc = json.loads(result.stdout)
    assert (doc["schema"], doc["command"]) == (1, "list")
    return doc["implementations"]


def readme_table(section: str) -> list[dict[str, str]]:
    """The first table of a README section, as one dict per row (header -> cell text), with
    code spans' backticks dropped and escaped pipes unescaped."""
    text = README.read_text().split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [
        [cell.strip().replace("`", "").replace("\\|", "|") for cell in cells]
        for cells in (re.split(r"(?<!\\)\|", line)[1:-1] for line in lines)
    ]
    header, rule, *body = rows
    assert set("".join(rule)) <= {"-", ":"}
    return [dict(zip(header, row, strict=True)) for row in body]


def test_list_describes_every_builtin_implementation() -> None:
    items = listed()
    assert [i["name"] for i in items] == list(REGISTRY)
    assert all(list(i) == list(COLUMNS) for i in items)
    by_name = {i["name"]: i for i in items}
    # the sparse losses gather the label's log-probability: no soft labels
    sparse = {n for n, i in by_name.items() if i["loss"] == "softmax" and "soft" not in i["labels"]}
    assert sparse == {
        "tf_sparse_softmax_xent", "keras_scce_logits", "torch_log_softmax_nll",
        "optax_softmax_xent_int",
    }  # fmt: skip
    softmax = [i for i in items if i["loss"] == "softmax"]
    assert all(i["labels"][:2] == ["class", "one-hot"] for i in softmax)
    # the sigmoid losses take one label in [0, 1] per logit
    sigmoid = {i["name"]: i["labels"] for i in items if i["loss"] == "sigmoid"}
    assert sigmoid == {
        n: ["multi-label"]
        for n in (
            "naive_sigmoid", "clipped_sigmoid", "tf_sigmoid_xent", "keras_bce_logits",
            "keras_bce_probs", "torch_bce_logits", "torch_bce_sigmoid", "optax_sigmoid_xent",
        )
    }  # fmt: skip
    assert all(i["dtypes"] == ["float16", "bfloat16", "float32", "float64"] for i in items)
    assert by_name["clipped"]["clip"] == "--eps"
    assert by_name["keras_cce_probs"]["clip"] == "keras.config.epsilon() (1e-07 by default)"
    assert by_name["tf_softmax_xent"]["clip"] == "none"
    assert {i["takes"] for i in items} == {"logits", "probabilities"}


def test_the_keras_default_epsilon_is_keras_own() -> None:
    import keras  # TensorFlow is imported once per test run; `list` itself never imports it

    assert keras.config.epsilon() == KERAS_DEFAULT_EPSILON
    assert CLIPS["keras"] == f"keras.config.epsilon() ({keras.config.epsilon():g} by default)"


def test_the_readme_table_is_what_list_says() -> None:
    table = readme_table("## Implementations")
    assert list(table[0]) == list(COLUMNS)
    assert [row["name"] for row in table] == list(REGISTRY)
    for row, item in zip(table, listed(), strict=True):
        assert row == {column: list_cell(item, column) for column in COLUMNS}


def test_list_table_shows_every_name_and_the_clip_sources() -> None:
    result = CliRunner().invoke(cli, ["list"], catch_exceptions=False)
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith(f"xentaudit list: {len(REGISTRY)} built-in implementations\n")
    assert all(name in out for name in REGISTRY)
    assert "clipped to [eps, 1-eps]" in out  # no rich markup eats the brackets
    assert "keras.config.epsilon() (1e-07 by default)" in out
