"""Find unstable cross-entropy code in Python source: one pass of an ``ast`` visitor, no
execution, no framework imported.

Names are resolved through the file's imports (``import tensorflow as tf``, ``from tensorflow.keras
import backend as K``, ``import torch.nn.functional as F``, ``from torch import nn``, ``import
jax.numpy as jnp``, ``from jax import nn``, ``import optax``, ...), so an unknown ``log`` or
``softmax`` is never flagged. Within a function (or the module), a name assigned from a softmax,
a clip, a loss object or a model that ends in softmax keeps that meaning until it is assigned
again, which is how ``p = tf.nn.softmax(x)`` followed by ``tf.math.log(p)`` is found; only
straight-line flow is followed.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass

from xentaudit.lint.rules import RULES

# Module prefixes that are the same API under another import path.
_SAME_AS = {"tensorflow.keras": "keras", "tf_keras": "keras", "tensorflow.compat.v2": "tensorflow"}
_FRAMEWORKS = {
    "tensorflow": "tf",
    "keras": "tf",
    "torch": "torch",
    "jax": "jax",
    "flax": "jax",
    "optax": "jax",
    "numpy": "numpy",
    "scipy": "numpy",
}
LOGS = {
    "tensorflow.math.log",
    "tensorflow.log",
    "keras.backend.log",
    "keras.ops.log",
    "torch.log",
    "numpy.log",
    "jax.numpy.log",
}
SOFTMAXES = {
    "tensorflow.nn.softmax",
    "tensorflow.math.softmax",
    "keras.activations.softmax",
    "keras.backend.softmax",
    "keras.ops.softmax",
    "keras.ops.nn.softmax",
    "torch.softmax",
    "torch.nn.functional.softmax",
    "torch.special.softmax",
    "jax.nn.softmax",
    "flax.linen.softmax",
    "scipy.special.softmax",
}
# Namespaces whose softmax has a log_softmax beside it with the same signature: the --fix of
# XA101 renames the attribute (keras.backend has none, and tf.keras.activations has one only
# since Keras 3, so a rewrite there could break an older install).
WITH_LOG_SOFTMAX = {s.rpartition(".")[0] for s in SOFTMAXES} - {
    "keras.backend",
    "keras.activations",
}
SIGMOIDS = {
    "tensorflow.sigmoid",
    "tensorflow.math.sigmoid",
    "tensorflow.nn.sigmoid",
    "keras.activations.sigmoid",
    "keras.backend.sigmoid",
    "keras.ops.sigmoid",
    "torch.sigmoid",
    "torch.nn.functional.sigmoid",
    "torch.special.expit",
    "jax.nn.sigmoid",
    "flax.linen.sigmoid",
    "scipy.special.expit",
}
CLIPS = {
    "tensorflow.clip_by_value",
    "keras.backend.clip",
    "keras.ops.clip",
    "torch.clamp",
    "torch.clip",
    "numpy.clip",
    "jax.numpy.clip",
}
EXPS = {
    "tensorflow.exp",
    "tensorflow.math.exp",
    "keras.backend.exp",
    "keras.ops.exp",
    "torch.exp",
    "numpy.exp",
    "jax.numpy.exp",
}
SUMS = {
    "tensorflow.reduce_sum",
    "tensorflow.math.reduce_sum",
    "keras.backend.sum",
    "keras.ops.sum",
    "torch.sum",
    "numpy.sum",
    "jax.numpy.sum",
}
EPSILONS = {"keras.backend.epsilon", "keras.config.epsilon"}
NLL_LOSSES = {"torch.nn.functional.nll_loss"}
# Functions taking logits -> (position, keyword) of the logits argument.
LOGIT_LOSSES = {
    "tensorflow.nn.softmax_cross_entropy_with_logits": (1, "logits"),
    "tensorflow.nn.sparse_softmax_cross_entropy_with_logits": (1, "logits"),
    "torch.nn.functional.cross_entropy": (0, "input"),
    "optax.softmax_cross_entropy": (0, "logits"),
    "optax.softmax_cross_entropy_with_integer_labels": (0, "logits"),
    "optax.safe_softmax_cross_entropy": (0, "logits"),
}
# Keras losses taking probabilities unless from_logits=True: the prediction is argument 1.
KERAS_FUNCTIONS = {
    "keras.losses.categorical_crossentropy",
    "keras.losses.sparse_categorical_crossentropy",
    "keras.backend.categorical_crossentropy",
    "keras.backend.sparse_categorical_crossentropy",
}
KERAS_CLASSES = {
    "keras.losses.CategoricalCrossentropy",
    "keras.losses.SparseCategoricalCrossentropy",
}
TORCH_LOGIT_CLASSES = {"torch.nn.CrossEntropyLoss"}
TORCH_NLL_CLASSES = {"torch.nn.NLLLoss"}
SOFTMAX_LAYERS = {"keras.layers.Softmax", "torch.nn.Softmax"}
ACTIVATION_LAYERS = {"keras.layers.Activation"}
SEQUENTIALS = {"keras.Sequential", "keras.models.Sequential", "torch.nn.Sequential"}
MODELS = {"keras.Model", "keras.models.Model"}
TAPES = {"tensorflow.GradientTape"}
EPSILON_NAME = re.compile(r"(^|_)eps(ilon)?(\d*$|_)")  # eps, EPS, log_eps, epsilon1; not steps
SMALL_EPS = 1e-3  # a constant added inside a log up to this size is an epsilon, not an offset
# The recursion limit while visiting: Python 3.11 keeps Python-to-Python calls off the C stack,
# so a deep limit is safe there; 3.10 keeps its default (too deep a file is then an XA000).
DEEPEST = 20_000 if sys.version_info >= (3, 11) else 1000


@dataclass(frozen=True)
class Finding:
    """One flagged expression. ``line`` and ``col`` are 1-based (``col`` in characters, as
    editors count); in a notebook they count within code cell ``cell`` (1-based among all
    cells). ``fix`` is what ``--fix`` uses (XA101: the attribute the softmax is renamed to,
    XA106: the function called), None where the fix is only suggested."""

    path: str
    line: int
    col: int
    end_line: int
    end_col: int
    code: str
    message: str
    replacement: str
    impl: str
    fix: str | None = None
    cell: int | None = None

    @property
    def name(self) -> str:
        """The rule's name, e.g. ``log-of-softmax``."""
        return RULES[self.code].name


@dataclass(frozen=True)
class _Tag:
    """What a name (or expression) holds: ``kind`` is ``softmax`` (probabilities from a
    softmax), ``sigmoid`` (a sigmoid's output), ``clip`` (clipped values), ``shifted`` (a
    difference, as x - max(x)), ``model`` (a model ending in softmax), ``logit-loss``,
    ``prob-loss`` or ``nll-loss`` (loss objects, with ``position`` the argument that takes the
    prediction); ``from_model``: the probabilities are a model's output."""

    kind: str
    framework: str
    position: int = 0
    from_model: bool = False
    origin: str | None = None  # the function that computed it, when one did


def _dotted(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _canonical(path: str) -> str:
    for prefix, same in _SAME_AS.items():
        if path == prefix or path.startswith(prefix + "."):
            return same + path[len(prefix) :]
    return path


def _framework(path: str) -> str:
    return _FRAMEWORKS.get(path.partition(".")[0], "tf")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    if len(call.args) > position and not any(isinstance(a, ast.Starred) for a in call.args):
        return call.args[position]
    return _keyword(call, name)


def _is_true(node: ast.expr | None) -> bool | None:
    """A keyword's value: True or False for a constant (False when absent, the default), None
    when not known statically."""
    if node is None:
        return False
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, bool) else None


class _Visitor(ast.NodeVisitor):
    def __init__(self, path: str, aliases: dict[str, str]) -> None:
        self.path = path
        self.aliases = aliases
        # Tensor methods (.softmax(), .log(), .clamp(), .exp(), .sum()) are read as torch's (or
        # numpy's / jax's for .clip() and .sum()) only when the file imports one of them.
        roots = {p.partition(".")[0] for p in aliases.values()}
        self.torch = "torch" in roots
        self.arrays = bool(roots & {"torch", "numpy", "jax"})
        # name -> what it holds, per enclosing function; None: a name that shadows an outer one
        self.scopes: list[dict[str, _Tag | None]] = [{}]
        self.tapes = 0
        self.xent_logs: set[int] = set()  # id of log calls in a cross-entropy position
        self.findings: list[Finding] = []
        self.seen: set[tuple[int, str]] = set()

    # --- names ---------------------------------------------------------------------------------

    def resolve(self, node: ast.expr) -> str | None:
        parts = _dotted(node)
        if parts is None or parts[0] not in self.aliases:
            return None
        return _canonical(".".join([self.aliases[parts[0]], *parts[1:]]))

    def local(self, module: str) -> str | None:
        """A name this file binds to ``module``, to call it from a rewrite."""
        return next((name for name, path in self.aliases.items() if path == module), None)

    def lookup(self, node: ast.expr) -> _Tag | None:
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
        return None

    def method(self, call: ast.Call, name: str) -> ast.expr | None:
        """The receiver of ``<receiver>.name(...)`` when it is not a module's function."""
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == name and not self.resolve(func.value):
            return func.value
        return None

    # --- what an expression is -----------------------------------------------------------------

    def softmax_layer(self, node: ast.expr) -> str | None:
        """The framework of a layer that ends in softmax (``Softmax()``, ``Dense(...,
        activation="softmax")``), None for any other expression."""
        if not isinstance(node, ast.Call):
            return None
        path = self.resolve(node.func)
        if path is None:
            return None
        if path in SOFTMAX_LAYERS:
            return _framework(path)
        activation = _keyword(node, "activation")
        if path in ACTIVATION_LAYERS and node.args:
            activation = node.args[0]
        if path.startswith("keras.layers.") and activation is not None:
            if isinstance(activation, ast.Constant) and activation.value == "softmax":
                return "tf"
            if self.resolve(activation) in SOFTMAXES:
                return "tf"
        return None

    def tag(self, node: ast.expr) -> _Tag | None:
        """What ``node`` computes, as far as the rules care."""
        if isinstance(node, ast.Name):
            return self.lookup(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub):
            return _Tag("shifted", "")  # x - max(x), as a stable log-sum-exp starts
        if not isinstance(node, ast.Call):
            return None
        path = self.resolve(node.func)
        if path in SOFTMAXES:
            return _Tag("softmax", _framework(path), origin=path)
        if self.torch and self.method(node, "softmax") is not None:
            return _Tag("softmax", "torch")
        if path in SIGMOIDS:
            return _Tag("sigmoid", _framework(path))
        if self.torch and not node.args and self.method(node, "sigmoid") is not None:
            return _Tag("sigmoid", "torch")
        if path in CLIPS or (
            self.arrays and any(self.method(node, m) is not None for m in ("clip", "clamp"))
        ):
            return _Tag("clip", _framework(path) if path else "torch")
        layer = self.softmax_layer(node.func)  # Dense(10, activation="softmax")(h)
        if layer is not None:
            return _Tag("softmax", layer, from_model=True)
        callee = self.tag(node.func)
        if callee is not None and callee.kind == "model":
            return _Tag("softmax", callee.framework, from_model=True)
        if path in SEQUENTIALS:
            layers = node.args
            if path != "torch.nn.Sequential" and layers and isinstance(layers[0], ast.List):
                layers = layers[0].elts
            if layers and self.softmax_layer(layers[-1]):
                return _Tag("model", _framework(path))
        if path in MODELS:
            outputs = _argument(node, 1, "outputs")
            out = self.tag(outputs) if outputs is not None else None
            if out is not None and out.kind == "softmax" and out.from_model:
                return _Tag("model", "tf")
        if path in KERAS_CLASSES:
            logits = _is_true(_keyword(node, "from_logits"))
            if logits is not None:
                return _Tag("logit-loss" if logits else "prob-loss", "tf", position=1)
        if path in TORCH_LOGIT_CLASSES:
            return _Tag("logit-loss", "torch")
        if path in TORCH_NLL_CLASSES:
            return _Tag("nll-loss", "torch")
        return None

    def softmax_of(self, node: ast.expr) -> _Tag | None:
        found = self.tag(node)
        return found if found is not None and found.kind == "softmax" else None

    def epsilon(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return not isinstance(node.value, bool) and 0 < node.value <= SMALL_EPS
        if isinstance(node, ast.Call):
            return self.resolve(node.func) in EPSILONS
        parts = _dotted(node)
        return parts is not None and EPSILON_NAME.search(parts[-1].lower()) is not None

    # --- findings ------------------------------------------------------------------------------

    def report(
        self, node: ast.expr, code: str, framework: str, replacement: str, fix: str | None = None
    ) -> None:
        """Record a finding; ``framework`` (or idiom) picks the rule's zoo implementation."""
        if (id(node), code) in self.seen:
            return
        self.seen.add((id(node), code))
        rule = RULES[code]
        impl = rule.impls.get(framework, rule.impls["tf"])
        self.findings.append(
            Finding(
                self.path,
                node.lineno,
                node.col_offset,  # bytes for now: made characters once, in lint_source
                node.end_lineno or node.lineno,
                node.end_col_offset or node.col_offset,
                code,
                rule.message,
                replacement,
                impl,
                fix,
            )
        )

    # --- scopes and statements -----------------------------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        arguments = node.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
        self.scopes.append(dict.fromkeys((a.arg for a in every), None))
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def assign(self, targets: list[ast.expr], value: ast.expr | None) -> None:
        found = self.tag(value) if value is not None else None
        for target in targets:
            if isinstance(target, ast.Name):
                self.scopes[-1][target.id] = found
            elif isinstance(target, ast.Tuple | ast.List):
                self.assign(list(target.elts), None)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        self.assign(node.targets, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.assign([node.target], node.value)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.assign([node.target], None)
        for statement in (*node.body, *node.orelse):
            self.visit(statement)

    visit_AsyncFor = visit_For

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        tape = any(
            isinstance(item.context_expr, ast.Call)
            and self.resolve(item.context_expr.func) in TAPES
            for item in node.items
        )
        self.tapes += tape
        self.generic_visit(node)
        self.tapes -= tape

    visit_AsyncWith = visit_With

    def visit_BinOp(self, node: ast.BinOp) -> None:
        # y * log(p): the log is weighted by labels, the shape of a hand-written cross-entropy
        # (a constant factor, as in 0.5 * log(var + eps), is not).
        if isinstance(node.op, ast.Mult):
            for this, other in ((node.left, node.right), (node.right, node.left)):
                if isinstance(this, ast.Call) and not isinstance(other, ast.Constant):
                    self.xent_logs.add(id(this))
        self.generic_visit(node)

    # --- calls ---------------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        path = self.resolve(node.func)
        callee = self.tag(node.func)
        nll = path in NLL_LOSSES or (callee is not None and callee.kind == "nll-loss")
        if nll and node.args:
            self.xent_logs.add(id(node.args[0]))
        if path in LOGS:
            if len(node.args) == 1 and not node.keywords:
                self.check_log(node, node.args[0], _framework(path))
        elif self.torch and not node.args and not node.keywords:
            receiver = self.method(node, "log")
            if receiver is not None:
                self.check_log(node, receiver, "torch")
        self.check_loss(node, path, callee)
        self.generic_visit(node)
        self.added(node)

    def added(self, node: ast.Call) -> None:
        """``model.add(layer)``: a Sequential model built step by step ends in its last layer."""
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "add" and len(node.args) == 1):
            return
        if isinstance(func.value, ast.Name):
            framework = self.softmax_layer(node.args[0])
            if framework is not None:
                self.scopes[-1][func.value.id] = _Tag("model", framework)
            elif self.lookup(func.value) == _Tag("model", "tf"):
                self.scopes[-1][func.value.id] = None

    def sigmoid_of(self, node: ast.expr) -> str | None:
        """The framework of ``sigmoid(x)`` or ``1 - sigmoid(x)`` (a function of a known module,
        torch's ``x.sigmoid()``, or a name assigned from one), None for any other expression."""
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Sub)
            and isinstance(node.left, ast.Constant)
            and node.left.value == 1
        ):
            node = node.right
        found = self.tag(node)
        return found.framework if found is not None and found.kind == "sigmoid" else None

    def check_log(self, node: ast.Call, arg: ast.expr, framework: str) -> None:
        sigmoid = self.sigmoid_of(arg)
        if sigmoid is not None:
            self.report(node, "XA107", sigmoid, RULES["XA107"].replacement)
            return
        softmax = self.softmax_of(arg)
        if softmax is not None:
            self.log_of_softmax(node, arg, softmax)
            return
        found = self.tag(arg)
        if found is not None and found.kind == "clip":
            if isinstance(arg, ast.Call):
                clipped = arg.args[0] if arg.args else getattr(arg.func, "value", arg)
                if self.xent_context(node, clipped):
                    self.report(node, "XA103", framework, RULES["XA103"].replacement)
            elif self.xent_context(node, None):
                self.report(node, "XA103", framework, RULES["XA103"].replacement)
            return
        if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
            for this, other in ((arg.left, arg.right), (arg.right, arg.left)):
                if self.epsilon(other) and self.xent_context(node, this):
                    self.report(node, "XA105", framework, RULES["XA105"].replacement)
                    return
        self.log_sum_exp(node, arg, framework)

    def xent_context(self, log: ast.Call, probabilities: ast.expr | None) -> bool:
        """Whether a log is part of a cross-entropy: of probabilities (a softmax, a model's
        output), weighted by labels, or fed to an NLL loss."""
        if id(log) in self.xent_logs:
            return True
        return probabilities is not None and self.softmax_of(probabilities) is not None

    def log_of_softmax(self, node: ast.Call, arg: ast.expr, softmax: _Tag) -> None:
        fix = None
        if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute):
            namespace = self.resolve(arg.func.value)
            if namespace in WITH_LOG_SOFTMAX or (namespace is None and arg.func.attr == "softmax"):
                fix = "log_softmax"
        if fix is not None:
            replacement = f"{ast.unparse(arg.func)[: -len('softmax')]}log_softmax(...)"
        elif softmax.from_model:
            replacement = "end the model with its logits and take log_softmax of them"
        else:
            replacement = "log_softmax of the logits the softmax was taken of"
        self.report(node, "XA101", softmax.framework, replacement, fix)

    def log_sum_exp(self, node: ast.Call, total: ast.expr, framework: str) -> None:
        if not isinstance(total, ast.Call):
            return
        path = self.resolve(total.func)
        function = path in SUMS
        receiver = None if function else self.method(total, "sum") if self.arrays else None
        if not function and receiver is None:
            return
        exp = total.args[0] if function and total.args else receiver
        if not isinstance(exp, ast.Call):
            return
        exp_path = self.resolve(exp.func)
        if exp_path in EXPS:
            exponent = exp.args[0] if exp.args else None
        elif self.arrays and self.method(exp, "exp") is not None:
            exponent = self.method(exp, "exp")
        else:
            return
        shifted = self.tag(exponent) if exponent is not None else None
        if shifted is not None and shifted.kind == "shifted":  # already stable
            return
        if exp_path is not None and exp_path in EXPS:
            framework = _framework(exp_path)
        elif path is not None:
            framework = _framework(path)
        fix = self.logsumexp(total, path, function, framework)
        replacement = fix + "(x, ...)" if fix else RULES["XA106"].replacement
        self.report(node, "XA106", framework, replacement, fix)

    def logsumexp(
        self, total: ast.Call, path: str | None, function: bool, framework: str
    ) -> str | None:
        """The logsumexp to call in place of log(sum(exp(x), ...)), None when the sum's
        arguments do not carry over unchanged or the file binds no name to reach it."""
        keywords = {k.arg for k in total.keywords}
        positional = len(total.args) - function  # not counting the summed exp
        tensorflow = path is not None and path.startswith("tensorflow.")
        if tensorflow and keywords <= {"axis", "keepdims", "name"} and positional <= 3:
            return ast.unparse(total.func)[: -len("reduce_sum")] + "reduce_logsumexp"
        if framework == "torch":
            # torch.logsumexp(x, dim, keepdim) needs the dim; torch.sum(x) sums everything
            has_dim = positional >= 1 or "dim" in keywords
            name = self.local("torch")
            if has_dim and keywords <= {"dim", "keepdim"} and positional <= 2 and name:
                return f"{name}.logsumexp"
        if framework == "jax" and keywords <= {"axis", "keepdims"} and positional <= 1:
            jax, nn = self.local("jax"), self.local("jax.nn")
            if nn or jax:
                return f"{nn}.logsumexp" if nn else f"{jax}.nn.logsumexp"
        return None

    def check_loss(self, node: ast.Call, path: str | None, callee: _Tag | None) -> None:
        """XA102 (probabilities passed as logits) and XA104 (a softmax model's output to a
        probability loss in a custom loop)."""
        if path in LOGIT_LOSSES:
            position, keyword = LOGIT_LOSSES[path]
            self.double_softmax(node, _argument(node, position, keyword), _framework(path))
        elif path in KERAS_FUNCTIONS:
            logits = _is_true(_keyword(node, "from_logits"))
            prediction = _argument(node, 1, "y_pred")
            if logits:
                self.double_softmax(node, prediction, "tf")
            elif logits is False:
                self.probability_loss(node, prediction)
        elif callee is not None and callee.kind in ("logit-loss", "prob-loss"):
            prediction = node.args[callee.position] if len(node.args) > callee.position else None
            if callee.kind == "logit-loss":
                self.double_softmax(node, prediction, callee.framework)
            else:
                self.probability_loss(node, prediction)
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "compile":
            model, loss = self.tag(node.func.value), _keyword(node, "loss")
            if model is not None and model.kind == "model" and loss is not None:
                found = self.tag(loss)
                if found is not None and found.kind == "logit-loss":
                    self.report(loss, "XA102", "tf", "remove the softmax from the model's end")

    def double_softmax(self, node: ast.Call, logits: ast.expr | None, framework: str) -> None:
        if logits is not None and self.softmax_of(logits) is not None:
            self.report(
                node,
                "XA102",
                framework,
                "pass the logits the softmax was taken of, not the softmax",
            )

    def probability_loss(self, node: ast.Call, prediction: ast.expr | None) -> None:
        """A Keras probability loss recovers the logits from a Keras softmax's output (under
        the float32 policy), which a custom loop can lose; never from TensorFlow's own op."""
        softmax = self.softmax_of(prediction) if prediction is not None else None
        if softmax is None:
            return
        if softmax.origin is not None and softmax.origin.startswith("tensorflow."):
            self.report(node, "XA104", "tf.nn.softmax", RULES["XA104"].replacement)
        elif softmax.from_model and self.tapes:
            self.report(node, "XA104", "tf", RULES["XA104"].replacement)


def aliases(tree: ast.Module) -> dict[str, str]:
    """Each name the file's imports bind -> the module or object it is, e.g. ``F`` ->
    ``torch.nn.functional``; relative imports are the project's own and skipped."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    found[alias.asname] = alias.name
                else:
                    root = alias.name.partition(".")[0]
                    found[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                found[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return found


def detect(tree: ast.Module, path: str) -> list[Finding]:
    """The findings in ``tree`` (parsed from ``path``), in source order; columns in bytes.
    A tree nested deeper than the visitor can recurse raises RecursionError."""
    visitor = _Visitor(path, aliases(tree))
    # The visitor recurses a few frames per level of nesting, and generated code (a sum of
    # thousands of terms) that Python parses and compiles nests deeper than the default 1000.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, DEEPEST))
    try:
        visitor.visit(tree)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(visitor.findings, key=lambda f: (f.line, f.col, f.code))
