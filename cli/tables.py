"""Tables on a terminal: every value printed whole, whatever the terminal's width.

Rich shrinks a table to the console's width (80 columns when piped) by cutting cells to
``comple…``. Here each column is as wide as its longest value; a header longer than that wraps
onto more lines (at spaces and underscores), and a table wider than the terminal is printed at
its own width (the terminal wraps the lines; nothing is cut).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text


def cell(value: object) -> str:
    """A value as a table shows it: '' for missing, thousands separators, 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _header(title: str, width: int) -> str:
    """``title`` wrapped to ``width`` at spaces and after underscores (never inside a word)."""
    marked = title.replace("_", "_\0 ")  # a break point after each underscore
    longest = max(len(word) for word in marked.replace("\0 ", " ").split())
    lines = textwrap.wrap(marked, max(width, longest), break_long_words=False)
    return "\n".join(line.replace("\0 ", "").replace("\0", "") for line in lines)


def print_table(rows: Sequence[Mapping[str, object]], columns: Mapping[str, str], *,
                title: str | None = None, console: Console | None = None) -> None:
    """Print ``rows`` under ``columns`` (row key -> header), values whole (module docstring)."""
    console = console or Console()
    cells = [[cell(row.get(key)) for key in columns] for row in rows]
    widths = [max([len(r[i]) for r in cells] + [1]) for i in range(len(columns))]
    shown_widths = []
    table = Table(title=title, title_justify="left")
    for (key, header), width in zip(columns.items(), widths, strict=True):
        numeric = all(isinstance(row.get(key), int | float) or row.get(key) is None
                      for row in rows)
        shown = _header(header, width)
        shown_widths.append(max(width, *(len(line) for line in shown.splitlines())))
        table.add_column(shown, justify="right" if numeric else "left", no_wrap=True,
                         min_width=shown_widths[-1])
    for row in cells:
        table.add_row(*(Text(value) for value in row))
    needed = sum(w + 3 for w in shown_widths) + 1  # one space each side, a border between
    Console(width=max(console.width, needed), file=console.file,
            force_terminal=console.is_terminal).print(table)
