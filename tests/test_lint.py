"""`xentaudit lint` without running any framework: each rule's positives in every idiom and
alias it claims and the stable look-alikes it must leave alone, noqa, rule selection,
notebooks, the renderers (SARIF validated against the OASIS schema), the corpus of training
scripts, the CLI's exit codes, and the README's table of rules."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from xentaudit import impls as zoo
from xentaudit.cli import cli
from xentaudit.errors import ConfigError, InputError
from xentaudit.lint import LintResult, lint_paths, lint_source, notebook_source, settings
from xentaudit.lint.formats import RENDERERS, github, sarif, text
from xentaudit.lint.rules import RULES, enabled, table

HERE = Path(__file__).parent
ROOT = HERE.parent
CORPUS = HERE / "lint_corpus"
IMPORTS = """\
import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import tensorflow as tf
import torch
import torch.nn.functional as F
from jax import nn as jnn
from tensorflow.keras import backend as K
from torch import nn
"""


def codes(body: str, imports: str = IMPORTS) -> list[str]:
    """The rule codes found in ``body`` (a function body, indented by the helper)."""
    source = imports + "\n\ndef f(x, y, p, q, eps, labels, logits, model, var):\n"
    source += "".join(f"    {line}\n" for line in body.strip().splitlines())
    found, _ = lint_source(source)
    return [f.code for f in found]


POSITIVES = {
    "XA101": [
        "tf.math.log(tf.nn.softmax(x))",
        "tf.math.log(tf.nn.softmax(x, axis=-1))",
        "tf.math.log(tf.math.softmax(x))",
        "tf.math.log(tf.keras.activations.softmax(x))",
        "K.log(K.softmax(x))",
        "keras.ops.log(keras.ops.softmax(x))",
        "torch.log(torch.softmax(x, -1))",
        "torch.log(F.softmax(x, dim=1))",
        "torch.log(nn.functional.softmax(x, dim=1))",
        "x.softmax(-1).log()",
        "torch.softmax(x, 1).log()",
        "jnp.log(jax.nn.softmax(x))",
        "jnp.log(jnn.softmax(x))",
        "np.log(jax.nn.softmax(x))",
        "s = tf.nn.softmax(x)\nloss = -tf.reduce_sum(y * tf.math.log(s))",
        "p = F.softmax(x, dim=1)\nq = p\nloss = F.nll_loss(torch.log(q), y)",
    ],
    "XA102": [
        "F.cross_entropy(F.softmax(x, dim=1), y)",
        "F.cross_entropy(input=F.softmax(x, dim=1), target=y)",
        "nn.CrossEntropyLoss()(torch.softmax(x, 1), y)",
        "crit = nn.CrossEntropyLoss()\nloss = crit(x.softmax(1), y)",
        "tf.nn.softmax_cross_entropy_with_logits(y, tf.nn.softmax(x))",
        "tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=tf.nn.softmax(x))",
        "tf.nn.sparse_softmax_cross_entropy_with_logits(y, K.softmax(x))",
        "keras.losses.CategoricalCrossentropy(from_logits=True)(y, tf.nn.softmax(x))",
        "keras.losses.categorical_crossentropy(y, tf.nn.softmax(x), from_logits=True)",
        "optax.softmax_cross_entropy(jax.nn.softmax(x), y)",
        "optax.softmax_cross_entropy_with_integer_labels(jnn.softmax(x), y)",
        "m = keras.Sequential([keras.layers.Dense(3, activation='softmax')])\n"
        "m.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))",
        "m = keras.Sequential()\nm.add(keras.layers.Dense(3))\nm.add(keras.layers.Softmax())\n"
        "m.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))",
        "m = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))\nF.cross_entropy(m(x), y)",
    ],
    "XA103": [
        "-tf.reduce_sum(y * tf.math.log(tf.clip_by_value(p, 1e-7, 1.0)))",
        "-K.sum(y * K.log(K.clip(p, K.epsilon(), 1 - K.epsilon())))",
        "-(y * torch.log(p.clamp(min=1e-7))).sum(1)",
        "-(y * torch.log(torch.clamp(p, 1e-7, 1.0))).sum(1)",
        "-jnp.sum(y * jnp.log(jnp.clip(p, 1e-7, 1.0)))",
        "c = np.clip(p, 1e-7, 1)\nloss = -np.sum(y * np.log(c))",
        "tf.math.log(tf.clip_by_value(tf.nn.softmax(x), 1e-7, 1.0))",
    ],
    "XA104": [
        "m = keras.Sequential([keras.layers.Dense(3, activation='softmax')])\n"
        "fn = keras.losses.CategoricalCrossentropy()\nwith tf.GradientTape() as tape:\n"
        "    loss = fn(y, m(x, training=True))",
        "m = keras.Sequential([keras.layers.Dense(3), keras.layers.Activation('softmax')])\n"
        "with tf.GradientTape() as tape:\n    out = m(x)\n"
        "    loss = keras.losses.categorical_crossentropy(y, out)",
        "h = keras.layers.Dense(3, activation=tf.nn.softmax)(x)\nm = keras.Model(x, h)\n"
        "fn = keras.losses.SparseCategoricalCrossentropy(from_logits=False)\n"
        "with tf.GradientTape() as tape:\n    loss = fn(y, m(x))",
        "keras.losses.CategoricalCrossentropy()(y, tf.nn.softmax(x))",
        "p = tf.nn.softmax(x)\nloss = keras.losses.categorical_crossentropy(y, p)",
    ],
    "XA105": [
        "-tf.reduce_sum(y * tf.math.log(p + 1e-9))",
        "-(y * torch.log(p + eps)).sum(1)",
        "-(y * torch.log(1e-8 + p)).sum(1)",
        "F.nll_loss(torch.log(p + 1e-8), y)",
        "nll = nn.NLLLoss()\nloss = nll(torch.log(q + 1e-8), y)",
        "-jnp.sum(labels * jnp.log(p + 1e-12))",
        "-np.sum(y * np.log(p + K.epsilon()))",
        "-np.sum(y * np.log(p + self.log_eps))",
        "tf.math.log(tf.nn.softmax(x) + 1e-7)",
    ],
    "XA106": [
        "tf.math.log(tf.reduce_sum(tf.exp(x), axis=-1))",
        "K.log(K.sum(K.exp(x), axis=-1))",
        "torch.log(torch.exp(x).sum(dim=1))",
        "torch.log(torch.sum(torch.exp(x), 1))",
        "torch.log(x.exp().sum(-1))",
        "jnp.log(jnp.sum(jnp.exp(x), axis=-1))",
        "np.log(np.sum(np.exp(x)))",
    ],
    "XA107": [
        "tf.math.log(tf.sigmoid(x))",
        "tf.math.log(1 - tf.math.sigmoid(x))",
        "K.log(K.sigmoid(x))",
        "keras.ops.log(keras.ops.sigmoid(x))",
        "torch.log(torch.sigmoid(x))",
        "torch.log(1 - F.sigmoid(x))",
        "x.sigmoid().log()",
        "jnp.log(jax.nn.sigmoid(x))",
        "jnp.log(1 - jnn.sigmoid(x))",
        "p = tf.sigmoid(x)\nloss = -tf.reduce_mean(y * tf.math.log(p))",
        "s = x.sigmoid()\nloss = torch.log(1 - s)",
    ],
}
NEGATIVES = [
    "tf.nn.log_softmax(x)",
    "F.log_softmax(x, dim=1)",
    "jax.nn.log_softmax(x)",
    "x.log_softmax(-1)",
    "probs = tf.nn.softmax(x)\nacc = tf.reduce_mean(tf.cast(tf.argmax(probs, -1) == y, 'float32'))",
    "p = F.softmax(x, dim=1)\nloss = F.cross_entropy(x, y)\ncorrect = (p.argmax(1) == y).sum()",
    "tf.nn.softmax_cross_entropy_with_logits(y, x)",
    "F.cross_entropy(F.log_softmax(x, dim=1), y)",
    "optax.softmax_cross_entropy(x, y)",
    "keras.losses.CategoricalCrossentropy(from_logits=True)(y, x)",
    "keras.losses.CategoricalCrossentropy()(y, keras.ops.softmax(x))",
    "grads = [tf.clip_by_value(g, -1.0, 1.0) for g in y]",
    "torch.log(var.clamp(min=1e-6))",
    "0.5 * tf.math.log(var + 1e-6)",
    "np.log(x + 1)",
    "-(y * torch.log(p + 0.5)).sum()",
    "-(y * torch.log(p + steps)).sum()",
    "p = tf.nn.softmax(x)\n\ndef g(p):\n    return -tf.reduce_sum(y * tf.math.log(p))",
    "p = tf.nn.softmax(x)\nfor p in y:\n    z = tf.math.log(p)",
    "p = tf.nn.softmax(x)\np, q = y\nz = tf.math.log(p)",
    "tf.reduce_logsumexp(x, axis=-1)",
    "tf.math.log_sigmoid(x)",
    "F.logsigmoid(x)",
    "jax.nn.log_sigmoid(-x)",
    "tf.math.log(2 - tf.sigmoid(x))",
    "tf.math.log(tf.sigmoid)",
    "p = tf.sigmoid(x)\np = tf.math.log_sigmoid(x)\nz = tf.math.log(1 + p)",
    "torch.logsumexp(x, dim=1)",
    "tf.math.log(tf.reduce_sum(x, axis=-1))",
    "m = np.max(x, axis=-1, keepdims=True)\nlse = m + np.log(np.exp(x - m).sum(axis=-1))",
    "z = x - tf.reduce_max(x, -1, keepdims=True)\nlse = tf.math.log(tf.reduce_sum(tf.exp(z), -1))",
    "softmax = lambda v: v\nlog = softmax\nlog(softmax(x))",
    "m = keras.Sequential([keras.layers.Dense(3, activation='softmax')])\n"
    "m.compile(loss='categorical_crossentropy')\nm.fit(x, y)",
    "m = keras.Sequential([keras.layers.Dense(3, activation='softmax')])\n"
    "fn = keras.losses.CategoricalCrossentropy()\nloss = fn(y, m(x))",
    "m = keras.Sequential([keras.layers.Dense(3)])\nfn = keras.losses.CategoricalCrossentropy()\n"
    "with tf.GradientTape() as tape:\n    loss = fn(y, m(x))",
    "p = tf.nn.softmax(x)\np = tf.nn.log_softmax(x)\nloss = -tf.reduce_sum(y * p)",
]


@pytest.mark.parametrize(
    ("code", "body"), [(code, body) for code, bodies in POSITIVES.items() for body in bodies]
)
def test_each_rule_fires_in_every_idiom_and_alias(code: str, body: str) -> None:
    assert codes(body) == [code]


@pytest.mark.parametrize("body", NEGATIVES)
def test_stable_look_alikes_are_not_flagged(body: str) -> None:
    assert codes(body) == []


def test_every_rule_has_positives_here() -> None:
    assert set(POSITIVES) == set(RULES)


def test_registry_names_what_exists() -> None:
    for code, rule in RULES.items():
        assert re.fullmatch(r"XA1\d\d", code) and rule.code == code
        assert set(rule.impls.values()) <= set(zoo.REGISTRY), code
        assert rule.fix in ("applied", "suggested")
        assert set(rule.policies) <= set(zoo.POLICIES) and set(rule.modes) <= set(zoo.MODES)
    assert len({rule.name for rule in RULES.values()}) == len(RULES)


@pytest.mark.parametrize(
    "imports",
    [
        "",  # log and softmax of unknown origin: nothing to resolve them to
        "from mylib import tf, torch, F, jnp, jax, K, np, nn, keras, optax, jnn\n",
    ],
)
def test_names_not_imported_from_a_framework_are_never_flagged(imports: str) -> None:
    bodies = [b for bs in POSITIVES.values() for b in bs if ".softmax(-1)" not in b]
    assert all(codes(body, imports) == [] for body in bodies)


def test_other_import_spellings_resolve() -> None:
    spelled = (
        "import tensorflow\nfrom tensorflow.nn import softmax\nfrom tensorflow import math as tm\n"
        "import torch.nn.functional\nfrom torch.nn.functional import softmax as sm\n"
        "from keras import ops\n"
    )
    body = (
        "a = tm.log(softmax(x))\nb = tensorflow.math.log(tensorflow.nn.softmax(x))\n"
        "c = torch.log(torch.nn.functional.softmax(x, 1))\nd = torch.log(sm(x, 1))\n"
        "e = ops.log(ops.softmax(x))"
    )
    assert codes(body, spelled) == ["XA101"] * 5


def test_finding_location_and_columns_count_characters() -> None:
    source = "import torch\nnom_é = 1; loss = torch.log(torch.softmax(x, 1))\n"
    [f] = lint_source(source, "a.py")[0]
    assert (f.path, f.line, f.col, f.end_line) == ("a.py", 2, 19, 2)
    assert f.end_col == len("nom_é = 1; loss = torch.log(torch.softmax(x, 1))") + 1
    assert (f.code, f.name, f.impl, f.fix) == (
        "XA101",
        "log-of-softmax",
        "torch_softmax_log",
        "log_softmax",
    )
    assert f.replacement == "torch.log_softmax(...)"


def test_finding_names_the_zoo_implementation_of_its_framework() -> None:
    source = IMPORTS + (
        "a = tf.math.log(tf.nn.softmax(x))\nb = torch.log(torch.softmax(x, 1))\n"
        "c = jnp.log(jax.nn.softmax(x))\nd = F.cross_entropy(F.softmax(x, 1), y)\n"
    )
    impls = [f.impl for f in lint_source(source)[0]]
    assert impls == ["shifted", "torch_softmax_log", "jax_softmax_log", "double_softmax"]


def test_fix_is_offered_only_where_a_log_softmax_has_the_same_signature() -> None:
    source = IMPORTS + (
        "a = K.log(K.softmax(x))\n"  # keras.backend has no log_softmax (nor Keras 2's activations)
        "b = tf.math.log(tf.nn.softmax(x))\n"
        "p = tf.nn.softmax(x)\nc = tf.math.log(p)\n"  # the softmax is used elsewhere too
        "d = torch.log(torch.sum(torch.exp(x)))\n"  # torch.logsumexp needs a dim
        "e = np.log(np.sum(np.exp(x)))\n"  # numpy has no logsumexp
        "g = jnp.log(jnp.sum(jnp.exp(x), axis=1, where=m))\n"  # where= does not carry over
    )
    fixes = [(f.line - IMPORTS.count("\n"), f.fix) for f in lint_source(source)[0]]
    assert fixes == [(1, None), (2, "log_softmax"), (4, None), (5, None), (6, None), (7, None)]


def test_noqa_suppresses_the_codes_it_names_on_any_line_of_the_expression() -> None:
    source = IMPORTS + (
        "a = tf.math.log(tf.nn.softmax(x))  # noqa: XA101\n"
        "b = tf.math.log(tf.nn.softmax(x))  # noqa\n"
        "c = tf.math.log(tf.nn.softmax(x))  # noqa: XA105, XA103\n"
        "d = tf.math.log(\n    tf.nn.softmax(x)  # noqa:XA101\n)\n"
        "e = '# noqa'; g = tf.math.log(tf.nn.softmax(x))\n"
    )
    found, suppressed = lint_source(source)
    assert [f.line - IMPORTS.count("\n") for f in found] == [3, 7]
    assert suppressed == 3


def test_rule_selection_by_code_and_prefix() -> None:
    assert enabled() == tuple(RULES)
    assert enabled(["XA10"], ["XA104"]) == ("XA101", "XA102", "XA103", "XA105", "XA106", "XA107")
    assert enabled(["XA101", "XA106"]) == ("XA101", "XA106")
    with pytest.raises(ValueError, match="unknown rule 'XA9'"):
        enabled(["XA9"])


def test_pyproject_table_is_checked() -> None:
    assert settings({"select": ["XA1"], "ignore": ["XA105"]}, None) == (("XA1",), ("XA105",))
    with pytest.raises(ConfigError, match=r"pyproject.toml: \[tool.xentaudit.lint\] ignore"):
        settings({"ignore": ["XA999"]}, Path("pyproject.toml"))
    with pytest.raises(ConfigError, match="select must be a list of rule codes"):
        settings({"select": "XA101"}, None)
    with pytest.raises(ConfigError, match="unknown key 'fix'"):
        settings({"fix": True}, None)


def notebook(*cells: tuple[str, str]) -> str:
    return json.dumps(
        {
            "cells": [
                {"cell_type": kind, "source": src.splitlines(keepends=True), "metadata": {}}
                for kind, src in cells
            ],
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {},
        }
    )


NOTEBOOK = notebook(
    ("markdown", "# Training\nlog(softmax(x)) is bad"),
    ("code", "%matplotlib inline\nimport torch\n!pip list\nfiles = !ls\ntorch.log?"),
    ("code", "%%time\nthis is not python"),
    ("code", "x = torch.randn(3, 4)\nloss = torch.log(torch.softmax(x, 1))"),
)


def test_notebook_code_cells_are_linted_and_located_by_cell(tmp_path: Path) -> None:
    path = tmp_path / "train.ipynb"
    path.write_text(NOTEBOOK)
    result = lint_paths([path])
    [f] = result.findings
    assert (f.cell, f.line, f.col, f.code, f.fix) == (4, 2, 8, "XA101", None)  # not rewritten
    assert text(result).splitlines()[0].startswith(f"{path}:cell 4:2:8: XA101 log-of-softmax")
    assert "line=" not in github(result)  # a cell's line is not a line of the .ipynb file
    source, starts = notebook_source(NOTEBOOK)
    assert starts == [(2, 1), (3, 6), (4, 8)]
    assert source.splitlines()[0] == ""  # the magic is blanked, its line kept


def test_one_path_is_one_path_and_no_path_is_refused(tmp_path: Path) -> None:
    # a string was iterated as its characters; an empty list linted nothing and passed
    path = tmp_path / "train.py"
    path.write_text("import torch\ny = torch.log(torch.softmax(x, 1))\n")
    for given in (str(path), path):
        assert [f.code for f in lint_paths(given).findings] == ["XA101"]
    with pytest.raises(ConfigError, match=r"^lint_paths needs a path"):
        lint_paths([])


def test_files_that_do_not_parse_are_reported_and_the_others_linted(tmp_path: Path) -> None:
    (tmp_path / "a.ipynb").write_text("{not json")
    (tmp_path / "b.py").write_bytes(b"x = '\xff'\n")
    (tmp_path / "c.py").write_text("def f(:\n")
    (tmp_path / "d.py").write_text("import torch\ny = torch.log(torch.softmax(x, 1))\n")
    result = lint_paths([tmp_path])
    assert [(Path(e.path).name, e.line, e.col, e.message) for e in result.errors] == [
        ("a.ipynb", 1, 1, "not a Jupyter notebook (no JSON list of cells)"),
        ("b.py", 1, 1, "not UTF-8 (byte at offset 5)"),
        ("c.py", 1, 7, "syntax error: invalid syntax"),
    ]
    assert [f.code for f in result.findings] == ["XA101"]
    assert result.exit_code == 2


@pytest.mark.parametrize("source", [[1, 2], ["x = (", 5], 5, {"a": "x"}, None])
def test_a_code_cell_whose_source_is_not_text_is_a_notebook_that_does_not_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: object
) -> None:
    # nbformat: a string or a list of strings; a list of numbers crashed the join (exit 3) and
    # a number or an object was linted as its repr (or as nothing) and passed
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    cells = [{"cell_type": "markdown", "source": "# x"}, {"cell_type": "code", "source": source}]
    (tmp_path / "nb.ipynb").write_text(json.dumps({"cells": cells}))
    message = "not a Jupyter notebook (cell 2's source is not a string or a list of strings)"
    assert [(e.line, e.col, e.message) for e in lint_paths(["nb.ipynb"]).errors] == [
        (1, 1, message)
    ]
    for fmt in ("sarif", "text"):  # the text report checked below
        result = run("--format", fmt, "nb.ipynb")
        assert result.exit_code == 2, result.stderr
        assert result.stderr == (
            f"xentaudit: error: 1 file(s) could not be parsed, first nb.ipynb: {message}; fix "
            "the syntax or exclude the file\n"
        )
    assert "nb.ipynb:1:1: XA000 not a Jupyter notebook" in result.stdout


def test_code_nested_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    """Generated code (a sum of 1,500 terms) parses, and is linted; deeper than the parser
    itself can go, the file is an XA000, never a crash."""
    deep = (
        "import torch\ny = " + " + ".join(["a"] * 1500) + "\nz = torch.log(torch.softmax(x, 1))\n"
    )
    limit = sys.getrecursionlimit()
    assert [f.code for f in lint_source(deep)[0]] == ["XA101"]
    assert sys.getrecursionlimit() == limit  # restored
    (tmp_path / "deeper.py").write_text("y = " + " + ".join(["a"] * 10_000) + "\n")
    [error] = lint_paths([tmp_path]).errors
    assert error.message == "nested too deeply to lint"
    # 100,000 unary minus signs: ast.parse itself raises MemoryError; a notebook's JSON nested
    # past the limit is no notebook: both are XA000 too
    (tmp_path / "deeper.py").write_text("x = " + "-" * 100_000 + "1\n")
    [error] = lint_paths([tmp_path / "deeper.py"]).errors
    assert error.message == "nested too deeply to lint"
    (tmp_path / "deep.ipynb").write_text("[" * 100_000 + "]" * 100_000)
    [error] = lint_paths([tmp_path / "deep.ipynb"]).errors
    assert error.message == "not a Jupyter notebook (no JSON list of cells)"


def test_folders_are_walked_skipping_hidden_and_environment_folders(tmp_path: Path) -> None:
    bad = "import torch\ny = torch.log(torch.softmax(x, 1))\n"
    for name in ("a.py", "pkg/b.py", ".venv/c.py", "venv/d.py", "pkg/__pycache__/e.py", "f.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(bad)
    result = lint_paths([tmp_path])
    assert result.files == 2
    assert [Path(f.path).name for f in result.findings] == ["a.py", "b.py"]
    with pytest.raises(InputError, match="no such file or folder"):
        lint_paths([tmp_path / "missing.py"])
    with pytest.raises(InputError, match=r"not a \.py file"):
        lint_paths([tmp_path / "f.txt"])
    with pytest.raises(InputError, match=r"^/dev/null: not a file or folder; name a \.py file"):
        lint_paths(["/dev/null"])  # a device is there: never "no such file"


def expected(path: Path) -> set[tuple[int, str]]:
    """The ``# expect: XA...`` marks the corpus scripts carry on each flagged line."""
    lines = path.read_text().splitlines()
    return {(n, c) for n, line in enumerate(lines, 1) for c in re.findall(r"expect: (XA\d+)", line)}


@pytest.mark.parametrize("script", sorted(CORPUS.glob("*.py")), ids=lambda p: p.stem)
def test_corpus_of_training_scripts(script: Path) -> None:
    result = lint_paths([script])
    assert {(f.line, f.code) for f in result.findings} == expected(script)
    assert not result.errors


def test_corpus_covers_every_rule_and_framework() -> None:
    marks = {code for script in CORPUS.glob("*.py") for _, code in expected(script)}
    assert marks == set(RULES)
    assert {p.stem for p in CORPUS.glob("*.py")} == {
        "keras_fit", "tf_gradient_tape", "torch_loop", "flax_optax_step"
    }  # fmt: skip


@pytest.fixture(scope="module")
def corpus_result() -> LintResult:
    return lint_paths([CORPUS])


def test_text_format_is_one_ruff_like_line_per_finding(corpus_result: LintResult) -> None:
    lines = text(corpus_result).splitlines()
    pattern = re.compile(r"^[^:]+\.py:\d+:\d+: XA10\d( \[\*\])? [a-z-]+: .+; fix: .+$")
    assert all(pattern.match(line) for line in lines[:-2]), lines
    assert lines[-1] == "Why, on numbers: xentaudit lint --explain CODE"
    assert lines[-2] == (
        f"{len(corpus_result.findings)} findings, "
        f"{sum(f.fix is not None for f in corpus_result.findings)} fixable with --fix "
        "in 4 files"
    )


def test_json_format_is_strict_and_complete(corpus_result: LintResult) -> None:
    document = json.loads(RENDERERS["json"](corpus_result))
    assert (document["command"], document["files"], document["errors"]) == ("lint", 4, [])
    first = document["findings"][0]
    assert set(first) == {
        "path", "cell", "line", "col", "end_line", "end_col", "code", "name", "message",
        "replacement", "impl", "fixable",
    }  # fmt: skip
    assert len(document["findings"]) == len(corpus_result.findings)


@pytest.fixture(scope="module")
def sarif_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((HERE / "sarif-schema-2.1.0.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_sarif_is_valid_sarif_2_1_0(corpus_result: LintResult, sarif_validator, tmp_path) -> None:
    log = json.loads(sarif(corpus_result))
    sarif_validator.validate(log)
    run = log["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == list(RULES)
    assert len(run["results"]) == len(corpus_result.findings)
    region = run["results"][0]["locations"][0]["physicalLocation"]["region"]
    assert region["startLine"] == corpus_result.findings[0].line
    # a notebook (no region) and a file that does not parse (a notification) stay valid
    (tmp_path / "nb.ipynb").write_text(NOTEBOOK)
    (tmp_path / "bad.py").write_text("def f(:\n")
    broken = lint_paths([tmp_path])
    log = json.loads(sarif(broken))
    sarif_validator.validate(log)
    assert log["runs"][0]["invocations"][0]["executionSuccessful"] is False


def test_sarif_schema_rejects_what_it_should(sarif_validator) -> None:
    """The stored schema is the real one: it refuses a log without runs or a wrong version."""
    assert not sarif_validator.is_valid({"version": "2.1.0"})
    assert not sarif_validator.is_valid({"version": "2.0.0", "runs": []})


def test_github_annotations(corpus_result: LintResult) -> None:
    lines = github(corpus_result).splitlines()
    assert len(lines) == len(corpus_result.findings)
    f = corpus_result.findings[0]
    assert lines[0].startswith(
        f"::error file={f.path},line={f.line},col={f.col},endLine={f.end_line},"
        f"endColumn={f.end_col},title={f.code} {f.name}::"
    )


def run(*args: str):
    return CliRunner().invoke(cli, ["lint", *args], catch_exceptions=False)


def test_cli_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no pyproject.toml of this repository in the way
    (tmp_path / ".git").mkdir()
    clean = tmp_path / "clean.py"
    clean.write_text("import torch\ny = torch.log_softmax(x, 1)\n")
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\ny = torch.log(torch.softmax(x, 1))\n")
    result = run(str(clean))
    assert (result.exit_code, result.stdout) == (0, "0 findings in 1 file\n")
    result = run(str(bad))
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{bad}:2:5: XA101 [*] log-of-softmax: ")
    assert run(str(bad), "--ignore", "XA101").exit_code == 0
    assert run(str(bad), "--select", "XA102,XA103").exit_code == 0
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    result = run(str(bad), str(broken))
    assert result.exit_code == 2
    assert f"{broken}:1:7: XA000 syntax error" in result.stdout  # the others still reported
    assert "XA101" in result.stdout
    assert result.stderr.startswith("xentaudit: error: 1 file(s) could not be parsed")
    for args in (["missing.py"], [], [str(bad), "--select", "XA9"], [str(bad), "--fix", "--diff"]):
        result = run(*args)
        assert result.exit_code == 2 and result.stdout == "", args
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("xentaudit: error: ")


def test_cli_reads_select_and_ignore_from_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.xentaudit.lint]\nignore = ["XA101"]\n')
    (tmp_path / "bad.py").write_text("import torch\ny = torch.log(torch.softmax(x, 1))\n")
    assert run("bad.py").exit_code == 0
    assert run("bad.py", "--select", "XA101").exit_code == 0  # ignore still applies
    (tmp_path / "pyproject.toml").write_text('[tool.xentaudit.lint]\nselect = ["XA7"]\n')
    result = run("bad.py")
    assert result.exit_code == 2
    assert "[tool.xentaudit.lint] select: unknown rule 'XA7'" in result.stderr


def test_cli_diff_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    script = tmp_path / "train.py"
    before = (
        "import tensorflow as tf\n\n"
        "def loss(x, y):\n"
        "    # keep this comment\n"
        "    p = tf.math.log(tf.nn.softmax(x, axis=-1))   # and this spacing\n"
        "    q = tf.math.log(tf.clip_by_value(tf.nn.softmax(x), 1e-7, 1.0))\n"
        "    return -tf.reduce_sum(y * p, axis=-1), q\n"
    )
    script.write_text(before)
    script.chmod(0o755)
    result = run("--diff", "train.py")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[2:] == [
        "@@ -2,6 +2,6 @@",
        " ",
        " def loss(x, y):",
        "     # keep this comment",
        "-    p = tf.math.log(tf.nn.softmax(x, axis=-1))   # and this spacing",
        "+    p = tf.nn.log_softmax(x, axis=-1)   # and this spacing",
        "     q = tf.math.log(tf.clip_by_value(tf.nn.softmax(x), 1e-7, 1.0))",
        "     return -tf.reduce_sum(y * p, axis=-1), q",
    ]
    assert script.read_text() == before  # --diff writes nothing
    result = run("--fix", "train.py")
    assert result.exit_code == 1  # XA103 is suggested, never applied: it is still reported
    assert [line.split(" ")[1] for line in result.stdout.splitlines()[:-2]] == ["XA103"]
    assert result.stderr == "xentaudit: fixed 1 finding(s)\n"
    assert script.read_text() == before.replace(
        "tf.math.log(tf.nn.softmax(x, axis=-1))", "tf.nn.log_softmax(x, axis=-1)"
    )
    assert script.stat().st_mode & 0o777 == 0o755
    # nothing left to rewrite, but XA103 is still a finding: exit 1, as without --diff
    left = run("--diff", "train.py")
    assert (left.exit_code, left.stdout) == (1, "")
    assert left.stderr == (
        "xentaudit: 1 finding(s) with no rewrite; run without --diff to list them\n"
    )
    (tmp_path / "broken.py").write_text("def (:\n")  # a file that does not parse: exit 2
    broken = run("--diff", "broken.py")
    assert broken.exit_code == 2 and len(broken.stderr.splitlines()) == 1
    assert "could not be parsed" in broken.stderr


def test_fix_in_a_read_only_folder_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # root writes into read-only folders: mkstemp refused in one folder stands in for one. The
    # file fixed first, in a writable folder, is not written either: all the files or none.
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    (tmp_path / "ro").mkdir()
    before = "import torch\ny = torch.log(torch.softmax(x, 1))\n"
    for name in ("a.py", "ro/g.py"):
        (tmp_path / name).write_text(before)
    mkstemp = tempfile.mkstemp

    def read_only(*args: object, dir: str, **kwargs: object) -> tuple[int, str]:
        if Path(dir) == tmp_path / "ro":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    result = run("--fix", "a.py", "ro/g.py")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"xentaudit: error: --fix: cannot rewrite ro/g.py: cannot create a file in {tmp_path}/ro "
        "(Permission denied); make the folder writable, or run with --diff instead to see the "
        "rewrites\n"
    )
    for folder, names in ((tmp_path, ["a.py", "ro"]), (tmp_path / "ro", ["g.py"])):
        assert sorted(p.name for p in folder.iterdir() if p.name != ".git") == names
    assert (tmp_path / "a.py").read_text() == (tmp_path / "ro/g.py").read_text() == before


def test_lint_imports_no_framework_and_no_libcst(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom xentaudit.cli import cli\n"
        f"from xentaudit.lint import lint_paths\nlint_paths([{str(CORPUS)!r}])\n"
        "heavy = {'tensorflow', 'keras', 'torch', 'jax', 'optax', 'flax', 'libcst'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


def test_readme_table_is_generated_from_the_registry() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- lint-rules:start -->\n(.*?)<!-- lint-rules:end -->", readme, re.S)
    assert match is not None, "README.md has no <!-- lint-rules:start/end --> markers"
    assert match.group(1) == table()


def test_pre_commit_hook_and_action() -> None:
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert (hook["id"], hook["entry"]) == ("xentaudit-lint", "xentaudit lint")
    assert hook["types_or"] == ["python", "jupyter"]
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    commands = " ".join(step.get("run", "") for step in action["runs"]["steps"])
    assert "xentaudit lint" in commands and "xentaudit check" in commands


def test_sources_are_read_in_their_own_encoding_and_fixed_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as Python reads them (PEP 263): a byte-order mark, a latin-1 coding line; a coding
    # Python does not know is a file that does not parse
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    body = b"import tensorflow as tf\ny = tf.math.log(tf.nn.softmax(x))\n"
    sources = {
        "bom.py": b"\xef\xbb\xbf" + body,
        "latin.py": b"# -*- coding: latin-1 -*-\n# caf\xe9\n" + body,
    }
    for name, raw in sources.items():
        (tmp_path / name).write_bytes(raw)
    (tmp_path / "bogus.py").write_bytes(b"# -*- coding: bogus-codec -*-\nimport os\n")
    result = lint_paths([tmp_path])
    assert [(Path(f.path).name, f.code, f.line) for f in result.findings] == [
        ("bom.py", "XA101", 2),
        ("latin.py", "XA101", 4),
    ]
    assert [(Path(e.path).name, e.message) for e in result.errors] == [
        ("bogus.py", "syntax error: unknown encoding: bogus-codec")
    ]
    assert run("--fix", "bom.py", "latin.py").exit_code == 0
    for name, raw in sources.items():  # rewritten in the file's own encoding, mark and all
        fixed = raw.replace(b"tf.math.log(tf.nn.softmax(x))", b"tf.nn.log_softmax(x)")
        assert (tmp_path / name).read_bytes() == fixed, name
