"""`lint --fix` and `--diff`: the rewrites equal to the original wherever it is finite, made on
LibCST's concrete syntax tree so every other byte of the file (comments, spacing, quotes) is
kept. Imported only when fixing: LibCST is not needed to lint.

- XA101 ``log(softmax(x, ...))`` -> ``log_softmax(x, ...)``: the softmax's call with its
  attribute renamed (``tf.nn.softmax`` -> ``tf.nn.log_softmax``, ``F.softmax`` ->
  ``F.log_softmax``, ``t.softmax(1).log()`` -> ``t.log_softmax(1)``); both namespaces take the
  same arguments. Where log(softmax(x)) is finite it equals x - logsumexp(x).
- XA106 ``log(sum(exp(x), ...))`` -> ``logsumexp(x, ...)`` (``Finding.fix`` names the function);
  the sum's other arguments carry over (the detector only offers the fix when they mean the
  same to both).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from xentaudit.lint import LintResult, source_encoding
from xentaudit.lint.detect import Finding

_SPACE = cst.SimpleWhitespace(" ")


def _argument(call: cst.Call) -> cst.BaseExpression:
    """What a log or sum is taken of: its first argument, or the receiver of ``x.log()``."""
    if call.args:
        return call.args[0].value
    assert isinstance(call.func, cst.Attribute)
    return call.func.value


def _bare(node: cst.BaseExpression) -> cst.BaseExpression:
    """``node`` as a first argument: parentheses it needed as a receiver are not needed (a
    tuple's or a generator's still are: without them it would be several arguments)."""
    if node.lpar and not isinstance(node, cst.Tuple | cst.GeneratorExp):
        return node.with_changes(lpar=[], rpar=[])
    return node


def _log_softmax(log: cst.Call) -> cst.BaseExpression:
    softmax = _argument(log)
    assert isinstance(softmax, cst.Call) and isinstance(softmax.func, cst.Attribute)
    renamed = softmax.func.with_changes(attr=cst.Name("log_softmax"))
    return softmax.with_changes(func=renamed, lpar=log.lpar, rpar=log.rpar)


def _logsumexp(log: cst.Call, function: str) -> cst.BaseExpression:
    total = _argument(log)
    assert isinstance(total, cst.Call) and isinstance(total.func, cst.Attribute)
    receiver = total.func.value
    if isinstance(receiver, cst.Call) and _is_exp(receiver):  # exp(x).sum(dim)
        exp, rest = receiver, list(total.args)
        comma: cst.Comma | cst.MaybeSentinel = cst.Comma(cst.SimpleWhitespace(""), _SPACE)
    else:  # sum(exp(x), dim)
        exp, rest = total.args[0].value, list(total.args[1:])
        comma = total.args[0].comma
    assert isinstance(exp, cst.Call)
    first = cst.Arg(_bare(_argument(exp)), comma=comma if rest else cst.MaybeSentinel.DEFAULT)
    return cst.Call(cst.parse_expression(function), [first, *rest], lpar=log.lpar, rpar=log.rpar)


def _is_exp(call: cst.Call) -> bool:
    return isinstance(call.func, cst.Attribute) and call.func.attr.value == "exp"


class _Comments(cst.CSTVisitor):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def visit_Comment(self, node: cst.Comment) -> None:
        self.found.append(node.value)


def _comments(node: cst.CSTNode) -> list[str]:
    visitor = _Comments()
    node.visit(visitor)
    return visitor.found


class _Rewrite(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, findings: Iterable[Finding]) -> None:
        super().__init__()
        self.wanted = {(f.line, f.col - 1, f.end_line, f.end_col - 1): f for f in findings}
        self.done: list[Finding] = []

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        where = self.get_metadata(PositionProvider, original)
        key = (where.start.line, where.start.column, where.end.line, where.end.column)
        finding = self.wanted.get(key)
        if finding is None or finding.fix is None:
            return updated
        if finding.code == "XA101":
            fixed = _log_softmax(updated)
        else:
            fixed = _logsumexp(updated, finding.fix)
        if _comments(fixed) != _comments(updated):  # a comment in the dropped syntax: keep it
            return updated
        self.done.append(finding)
        return fixed


def fix_source(source: str, findings: Sequence[Finding]) -> tuple[str, list[Finding]]:
    """``source`` with the fixable ``findings`` (from ``lint_source`` on it) rewritten, and the
    findings that were. Nested findings are rewritten inside out, in one pass."""
    fixable = [f for f in findings if f.fix is not None]
    if not fixable:
        return source, []
    rewrite = _Rewrite(fixable)
    module = MetadataWrapper(cst.parse_module(source)).visit(rewrite)
    return module.code, rewrite.done


@dataclass(frozen=True)
class FileFix:
    """One file's rewrite: its text before and after, and the findings it fixed."""

    path: str
    before: str
    after: str
    fixed: tuple[Finding, ...]
    encoding: str = "utf-8"  # the file's (``source_encoding``), which the rewrite keeps

    @property
    def diff(self) -> str:
        """The rewrite as a unified diff, as ``git diff`` shows it."""
        return "".join(
            difflib.unified_diff(
                self.before.splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                f"a/{str(self.path).lstrip('/')}",  # as git shows an absolute path: a/tmp/x.py
                f"b/{str(self.path).lstrip('/')}",
            )
        )


def fix_result(result: LintResult) -> list[FileFix]:
    """The rewrites of every file with fixable findings in ``result`` (read again from disk;
    nothing is written). Notebooks' findings carry no fix."""
    by_file: dict[str, list[Finding]] = {}
    for f in result.findings:
        if f.fix is not None:
            by_file.setdefault(f.path, []).append(f)
    fixes = []
    for name, findings in by_file.items():
        raw = Path(name).read_bytes()
        encoding = source_encoding(raw)  # as linted: it parsed
        before = raw.decode(encoding)
        after, done = fix_source(before, findings)
        if done:
            fixes.append(FileFix(name, before, after, tuple(done), encoding))
    return fixes
