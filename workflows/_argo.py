"""The small part of Argo's semantics the local executor needs: ``{{...}}`` substitution,
``depends`` and ``when`` expressions. Standard library only.

Argo resolves ``{{variable}}`` in a template's fields from a scope (``workflow.parameters.x``,
``tasks.t.outputs.parameters.p``, ``inputs.parameters``, ...) and fails the node when a variable is
unknown; it evaluates ``when`` (after substitution) with govaluate and ``depends`` as a boolean
expression over task results (``task`` alone means ``task.Succeeded || task.Skipped ||
task.Daemoned``). This module implements those rules for the expressions our template uses
(``==``, ``!=``, ordering comparisons, ``&&``, ``||``, ``!``, parentheses) and rejects the rest
with a message naming the expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_VARIABLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_TOKEN = re.compile(r"\s*(\|\||&&|==|!=|<=|>=|<|>|!|\(|\)|\"[^\"]*\"|'[^']*'|[^\s()!&|=<>\"']+)")

RESULTS = {
    "Succeeded": {"Succeeded"},
    "Failed": {"Failed"},
    "Errored": {"Error"},
    "Skipped": {"Skipped"},
    "Omitted": {"Omitted"},
    "Daemoned": set(),
    "AnySucceeded": {"Succeeded"},
    "AllFailed": {"Failed", "Error"},
}
"""``task.RESULT`` in ``depends``, mapped to the node phases that satisfy it."""


class ExpressionError(ValueError):
    """An expression or a variable the executor cannot resolve; Argo would fail the node too."""


def substitute(text: str, scope: Mapping[str, str]) -> str:
    """Replace every ``{{name}}`` in ``text`` with ``scope[name]``.

    Raises:
        ExpressionError: a variable is not in scope (the message names it).
    """

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in scope:
            raise ExpressionError(f"unable to resolve {{{{{key}}}}}")
        return scope[key]

    return _VARIABLE.sub(replace, text)


def variables(text: str) -> list[str]:
    """The ``{{variables}}`` named in a text."""
    return [m.group(1) for m in _VARIABLE.finditer(text)]


def _tokens(expression: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = expression.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ExpressionError(f"cannot parse {expression!r} at {text[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive descent over ``||``, ``&&``, ``!`` and parentheses; atoms via a callback."""

    def __init__(self, expression: str, atom: Callable[[list[str]], bool]) -> None:
        self.expression = expression
        self.tokens = _tokens(expression)
        self.pos = 0
        self.atom = atom

    def parse(self) -> bool:
        if not self.tokens:
            raise ExpressionError("empty expression")
        value = self._or()
        if self.pos != len(self.tokens):
            raise ExpressionError(f"unexpected {self.tokens[self.pos]!r} in {self.expression!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _or(self) -> bool:
        value = self._and()
        while self._peek() == "||":
            self.pos += 1
            right = self._and()
            value = value or right
        return value

    def _and(self) -> bool:
        value = self._unary()
        while self._peek() == "&&":
            self.pos += 1
            right = self._unary()
            value = value and right
        return value

    def _unary(self) -> bool:
        token = self._peek()
        if token == "!":
            self.pos += 1
            return not self._unary()
        if token == "(":
            self.pos += 1
            value = self._or()
            if self._peek() != ")":
                raise ExpressionError(f"missing ')' in {self.expression!r}")
            self.pos += 1
            return value
        start = self.pos
        while self._peek() not in (None, "&&", "||", ")"):
            self.pos += 1
        if start == self.pos:
            raise ExpressionError(f"missing operand in {self.expression!r}")
        return self.atom(self.tokens[start : self.pos])


def _operand(token: str) -> str | float:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        return token[1:-1]
    try:
        return float(token)
    except ValueError:
        return token


def evaluate_when(expression: str) -> bool:
    """Evaluate a substituted ``when`` expression, e.g. ``true == true`` or ``0.4 > 0.3``."""

    def atom(tokens: list[str]) -> bool:
        if len(tokens) == 1:
            value = _operand(tokens[0])
            if value in ("true", "false"):
                return value == "true"
            raise ExpressionError(f"{tokens[0]!r} in {expression!r} is not a boolean")
        if len(tokens) != 3:
            raise ExpressionError(f"cannot evaluate {' '.join(tokens)!r} in {expression!r}")
        left, op, right = _operand(tokens[0]), tokens[1], _operand(tokens[2])
        if op == "==":
            return left == right
        if op == "!=":
            return left != right
        if isinstance(left, float) and isinstance(right, float):
            return {
                "<": left < right,
                ">": left > right,
                "<=": left <= right,
                ">=": left >= right,
            }[op]
        raise ExpressionError(f"operator {op!r} needs numbers in {expression!r}")

    return _Parser(expression, atom).parse()


def depends_tasks(expression: str) -> list[str]:
    """The task names a ``depends`` expression refers to."""
    names = []
    for token in _tokens(expression):
        if token in ("&&", "||", "!", "(", ")"):
            continue
        name = token.split(".", 1)[0]
        if name not in names:
            names.append(name)
    return names


def evaluate_depends(expression: str, phases: Mapping[str, str]) -> bool:
    """Evaluate a ``depends`` expression given the phase of every task it names."""

    def atom(tokens: list[str]) -> bool:
        if len(tokens) != 1:
            raise ExpressionError(f"cannot evaluate {' '.join(tokens)!r} in {expression!r}")
        name, _, result = tokens[0].partition(".")
        if name not in phases:
            raise ExpressionError(f"depends on unknown task {name!r} in {expression!r}")
        phase = phases[name]
        if not result:
            return phase in ("Succeeded", "Skipped")
        if result not in RESULTS:
            raise ExpressionError(f"unknown task result {result!r} in {expression!r}")
        return phase in RESULTS[result]

    return _Parser(expression, atom).parse()
