"""Lazy package exports: a package's public names, imported from their modules on first use.

``archscale --help`` must not pay for JAX, Optuna or pandas, yet ``from archscale.laws import
fit_law`` should keep working; a package's ``__init__`` maps each public name to its module and
installs the module-level ``__getattr__`` / ``__dir__`` (PEP 562) that this returns.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose ``exports`` map a public name to the
    submodule (relative to ``package``) that defines it."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:  # the package's own names, and the lazy ones not yet loaded
        return sorted({*vars(importlib.import_module(package)), *exports})

    return __getattr__, __dir__
