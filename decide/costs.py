"""What a candidate run costs: training FLOPs by default, or a declared cost expression.

A cost expression is arithmetic over the table's columns (``6 * N * D``, ``N * num_experts``,
``N``), parsed with Python's ``ast`` and evaluated over whole columns; only numbers, column
names, + - * / ** and the functions in FUNCTIONS are accepted, so a cost read from a command
line or a sweep file cannot run code.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

import numpy as np
import pandas as pd

from archscale.arch.errors import ArchscaleError

DEFAULT_COST = "6 * N * D"
"""Training FLOPs of a run, by the 6ND rule (ArchSpec's rule, without the attention term, which
a table of finished runs rarely carries; a ``flops`` column is used where it is)."""
FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log": np.log, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs}
"""Functions a cost expression may call."""
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow}


def parse_cost(expression: str | None, columns: list[str]) -> Callable[[pd.DataFrame], np.ndarray]:
    """A function table -> cost per row. None means training FLOPs (``flops`` when the table has
    it, else 6 N D). Refuses unknown names and anything but arithmetic, naming the fix."""
    if expression is None:
        expression = "flops" if "flops" in columns else DEFAULT_COST
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError as err:
        raise ArchscaleError(f"cost {expression!r} is not an expression ({err.msg}): write "
                             "arithmetic over columns, e.g. '6 * N * D'") from None
    _check(tree, expression, set(columns))

    def cost(table: pd.DataFrame) -> np.ndarray:
        values = np.broadcast_to(np.asarray(_evaluate(tree, table), dtype=float), (len(table),))
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ArchscaleError(f"cost {expression!r} is not positive and finite on every run: "
                                 "a cost must be > 0")
        return values.copy()

    return cost


def _check(node: ast.AST, expression: str, columns: set[str]) -> None:
    allowed = (ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Call, ast.Load, ast.USub,
               ast.UAdd, *_BINARY)
    for child in ast.walk(node):
        if not isinstance(child, allowed):
            raise ArchscaleError(f"cost {expression!r}: {type(child).__name__} is not allowed; "
                                 "use numbers, column names, + - * / ** and "
                                 f"{sorted(FUNCTIONS)}")
        if isinstance(child, ast.Constant) and not isinstance(child.value, int | float):
            raise ArchscaleError(f"cost {expression!r}: only numeric constants are allowed")
        if isinstance(child, ast.Call) and not (isinstance(child.func, ast.Name)
                                                and child.func.id in FUNCTIONS
                                                and len(child.args) == 1 and not child.keywords):
            raise ArchscaleError(f"cost {expression!r}: only one-argument calls of "
                                 f"{sorted(FUNCTIONS)} are allowed")
        if isinstance(child, ast.Name) and child.id not in columns | set(FUNCTIONS):
            raise ArchscaleError(f"cost {expression!r} names {child.id!r}, which the table lacks; "
                                 f"its columns are {sorted(columns)}")


def _evaluate(node: ast.AST, table: pd.DataFrame):
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return pd.to_numeric(table[node.id], errors="coerce").to_numpy(dtype=float)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, table)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](_evaluate(node.args[0], table))
    return _BINARY[type(node.op)](_evaluate(node.left, table), _evaluate(node.right, table))
