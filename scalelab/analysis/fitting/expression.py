"""Law expressions: arithmetic over named columns and parameters, parsed safely, with exact gradients.

An expression such as ``E + A / N**alpha + B / D**beta`` is parsed with ``ast`` and only a
whitelist is accepted: numbers, names, ``+ - * / **``, unary minus and calls of ``exp``, ``log``,
``log1p``, ``expm1`` and ``sqrt``. Nothing is ever passed to ``eval``: the tree is walked by
``_Evaluator``, which computes the value and, for the fitter, the gradient with respect to the
parameters in forward mode (each node carries d value / d theta), so a law from a file is fitted
with exact derivatives like the built-in ones.

Shapes: values broadcast as (S, R) -- S parameter rows (starts or resamples), R runs; gradients
are (S, R, P) for P free parameters, or None for nodes that do not depend on any parameter.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass

import numpy as np

from scalelab.analysis.errors import AnalysisError

FUNCTIONS = {
    "exp": (np.exp, lambda x, v: v),
    "log": (np.log, lambda x, v: 1.0 / x),
    "log1p": (np.log1p, lambda x, v: 1.0 / (1.0 + x)),
    "expm1": (np.expm1, lambda x, v: v + 1.0),
    "sqrt": (np.sqrt, lambda x, v: 0.5 / v),
}
BINARY = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)
UNARY = (ast.USub, ast.UAdd)


def _check(node: ast.AST, text: str) -> None:
    """Raise AnalysisError unless every node of the tree is on the whitelist."""
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Expression, ast.Load, *BINARY, *UNARY)):
            continue
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, BINARY):
            continue
        if isinstance(sub, ast.UnaryOp) and isinstance(sub.op, UNARY):
            continue
        if (isinstance(sub, ast.Constant) and isinstance(sub.value, (int, float))
                and not isinstance(sub.value, bool)):
            continue
        if isinstance(sub, ast.Name):
            continue
        if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in FUNCTIONS
                and len(sub.args) == 1 and not sub.keywords):
            continue
        calls = ", ".join(f"{f}(x)" for f in FUNCTIONS)
        what = type(sub).__name__ if not isinstance(sub, ast.Call) else f"a call other than {calls}"
        raise AnalysisError(f"law expression {text!r}: {what} is not allowed (use numbers, names, "
                            f"+ - * / **, and {', '.join(FUNCTIONS)})")


@dataclass(frozen=True)
class Expression:
    """A parsed, checked law expression."""

    text: str
    tree: ast.Expression

    @property
    def names(self) -> tuple[str, ...]:
        """The names it uses (parameters and variables), functions excluded, in order of appearance."""
        calls = {id(n.func) for n in ast.walk(self.tree) if isinstance(n, ast.Call)}
        seen = [n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name) and id(n) not in calls]
        return tuple(dict.fromkeys(seen))

    def value(self, env: dict):
        """The expression's value with every name taken from ``env`` (arrays broadcast)."""
        return _Evaluator(env, {}, 0).visit(self.tree.body)[0]

    def value_and_grad(self, env: dict, grads: dict, n_params: int):
        """(value, d value / d theta): ``grads`` maps a parameter name to its (S, 1, P) derivative."""
        return _Evaluator(env, grads, n_params).visit(self.tree.body)


def parse(text: str) -> Expression:
    """Parse and check ``text``; AnalysisError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise AnalysisError(f"a law expression must be a non-empty string, got {text!r}")
    return _parsed(text.strip())


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> Expression:
    """One parse per expression: a law is evaluated thousands of times in a bootstrap (and its
    tree is only read)."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise AnalysisError(f"law expression {text!r} is not valid: {exc.msg}") from None
    _check(tree, text)
    return Expression(text, tree)


def _add(g1, g2, sign: float = 1.0):
    if g2 is None:
        return g1
    if g1 is None:
        return g2 if sign > 0 else -g2
    return g1 + g2 if sign > 0 else g1 - g2


def _scale(g, factor):
    return None if g is None else g * np.asarray(factor)[..., None]


class _Evaluator:
    """Walks a checked tree: each visit returns (value, gradient or None)."""

    def __init__(self, env: dict, grads: dict, n_params: int):
        self.env, self.grads, self.n_params = env, grads, n_params

    def visit(self, node):
        if isinstance(node, ast.Constant):
            return float(node.value), None
        if isinstance(node, ast.Name):
            if node.id not in self.env:
                raise AnalysisError(f"law expression uses {node.id!r}, which is neither a parameter nor a "
                                    "variable of the law (nor a column of the table)")
            return self.env[node.id], self.grads.get(node.id)
        if isinstance(node, ast.UnaryOp):
            v, g = self.visit(node.operand)
            return (-v, None if g is None else -g) if isinstance(node.op, ast.USub) else (v, g)
        if isinstance(node, ast.Call):
            v, g = self.visit(node.args[0])
            function, derivative = FUNCTIONS[node.func.id]
            out = function(v)
            return out, _scale(g, derivative(v, out))
        return self._binary(node)

    def _binary(self, node: ast.BinOp):
        (v1, g1), (v2, g2) = self.visit(node.left), self.visit(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return v1 + v2, _add(g1, g2)
        if isinstance(op, ast.Sub):
            return v1 - v2, _add(g1, g2, -1.0)
        if isinstance(op, ast.Mult):
            return v1 * v2, _add(_scale(g1, v2), _scale(g2, v1))
        if isinstance(op, ast.Div):
            out = v1 / v2
            return out, _scale(_add(g1, _scale(g2, out), -1.0), 1.0 / v2)
        out = v1 ** v2    # d(x^y) = x^y (y dx / x + log x dy)
        grad = _scale(g1, v2 * v1 ** (v2 - 1.0)) if g1 is not None else None
        if g2 is not None:
            grad = _add(grad, _scale(g2, out * np.log(v1)))
        return out, grad
