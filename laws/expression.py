"""A declared law's expression: arithmetic text parsed into a JAX function, never ``eval``-ed.

The text is parsed with Python's ``ast`` and only these nodes are accepted: numbers, names (the
form's inputs and coefficients), ``+ - * / **``, unary minus, and calls of the functions in
FUNCTIONS (each a jax.numpy function). Anything else (attributes, subscripts, comprehensions,
lambdas, keyword arguments, strings) is refused with the offending text, so a form file from
someone else cannot run code. The accepted tree is evaluated by walking it with jax.numpy values,
so JAX differentiates it like any other function.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from archscale.arch.errors import ArchscaleError

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "log": jnp.log, "log1p": jnp.log1p, "exp": jnp.exp, "expm1": jnp.expm1, "sqrt": jnp.sqrt,
    "abs": jnp.abs, "tanh": jnp.tanh, "minimum": jnp.minimum, "maximum": jnp.maximum,
    "logaddexp": jnp.logaddexp, "softplus": lambda x: jnp.logaddexp(x, 0.0),
    "sigmoid": lambda x: 1.0 / (1.0 + jnp.exp(-x)), "clip": jnp.clip,
}
"""Functions an expression may call, by name."""
CONSTANTS = {"pi": float(jnp.pi)}
"""Named constants an expression may use."""
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _refuse(text: str, node: ast.AST, why: str) -> ArchscaleError:
    snippet = ast.get_source_segment(text, node) or type(node).__name__
    return ArchscaleError(f"expression {text!r}: {why} ({snippet!r}); write arithmetic "
                          f"(+ - * / **) of the inputs and coefficients and calls of "
                          f"{', '.join(sorted(FUNCTIONS))}")


def _check(text: str, node: ast.AST, names: frozenset[str]) -> None:
    """Refuse any node outside the arithmetic subset (walks the whole tree)."""
    if isinstance(node, ast.Expression):
        _check(text, node.body, names)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise _refuse(text, node, "only numbers may be written as constants")
    elif isinstance(node, ast.Name):
        if node.id not in names and node.id not in CONSTANTS:
            raise _refuse(text, node, f"unknown name {node.id!r} (the form declares "
                                      f"{sorted(names)})")
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(text, node.left, names)
        _check(text, node.right, names)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check(text, node.operand, names)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise _refuse(text, node, "unknown function")
        if node.keywords:
            raise _refuse(text, node, "keyword arguments are not accepted")
        for arg in node.args:
            _check(text, arg, names)
    else:
        raise _refuse(text, node, "not arithmetic")


def _evaluate(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return env[node.id] if node.id in env else CONSTANTS[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, env), _evaluate(node.right, env))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, env))
    assert isinstance(node, ast.Call)  # _check let nothing else through
    return FUNCTIONS[node.func.id](*(_evaluate(a, env) for a in node.args))


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression over named inputs and coefficients, with optional named
    intermediate quantities (``definitions``, each readable by those after it)."""

    text: str
    """The expression as declared, e.g. ``E + A / N**alpha + B / D**beta``."""
    tree: ast.Expression
    """Its syntax tree (only the nodes ``_check`` accepts)."""
    steps: tuple[tuple[str, ast.Expression], ...] = ()
    """Intermediate quantities (name, tree), evaluated in order before ``tree``."""

    def __call__(self, env: Mapping[str, Any]) -> Any:
        """The expression's value with every name bound in ``env`` (jax or numpy arrays)."""
        env = dict(env)
        for name, tree in self.steps:
            env[name] = _evaluate(tree.body, env)
        return _evaluate(self.tree.body, env)

    def names(self) -> set[str]:
        """The input and coefficient names the expression and its definitions read."""
        read = {n.id for t in (self.tree, *(t for _, t in self.steps))
                for n in ast.walk(t) if isinstance(n, ast.Name)}
        return read - set(CONSTANTS) - {name for name, _ in self.steps}


def _tree(text: str, names: frozenset[str]) -> ast.Expression:
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError as err:
        raise ArchscaleError(f"expression {text!r} is not valid arithmetic: {err.msg}") from None
    _check(text, tree, names)
    return tree


def parse(text: str, names: Sequence[str],
          definitions: Mapping[str, str] | None = None) -> Expression:
    """Parse ``text``; every name must be one of ``names`` (inputs and coefficients) or of the
    ``definitions`` (name -> expression, in order; each may read the ones before it)."""
    defined = list(definitions or {})
    clash = set([*names, *defined]) & (set(FUNCTIONS) | set(CONSTANTS))
    if clash or set(names) & set(defined):
        raise ArchscaleError(f"names {sorted(clash or set(names) & set(defined))} are used "
                             "twice (as function, constant, input, coefficient or definition "
                             "names): rename them")
    known, steps = set(names), []
    for name, body in (definitions or {}).items():
        steps.append((name, _tree(body, frozenset(known))))
        known.add(name)
    return Expression(text=str(text).strip(), tree=_tree(text, frozenset(known)),
                      steps=tuple(steps))
