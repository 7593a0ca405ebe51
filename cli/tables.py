"""Tables on a terminal: every value printed whole, whatever the terminal's width.

Rich shrinks a table to the console's width (80 columns when piped) by cutting cells to
``comple…``. Here each column is as wide as its longest value; a header longer than that wraps
onto more lines (at spaces and underscores), a table wider than the terminal is printed at its
own width (the terminal wraps the lines; nothing is cut), and the title and caption are lines
of their own, never wrapped.
"""

from __future__ import annotations

import math
import re
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


_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(e[-+]?\d+)?[%xM]?$|^$")


def _is_number(value: object) -> bool:
    if isinstance(value, str):
        return bool(_NUMBER.match(value.strip()))
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def print_table(rows: Sequence[Mapping[str, object] | Sequence[object]],
                columns: Mapping[str, str] | Sequence[str], *, title: str | None = None,
                caption: str | None = None, show_header: bool = True,
                sections: Sequence[int] = (), console: Console | None = None) -> None:
    """Print ``rows`` whole (module docstring).

    columns: row key -> header for mapping rows, or the headers of sequence rows. A column
    whose values all read as numbers is right-aligned. sections: row indices a rule goes above.
    """
    console = console or Console()
    headers = list(columns.values()) if isinstance(columns, Mapping) else list(columns)
    raw = [[row.get(key) for key in columns] if isinstance(row, Mapping) else list(row)
           for row in rows]
    cells = [[cell(value) for value in row] for row in raw]
    table = Table(show_header=show_header)
    shown_widths = []
    for i, header in enumerate(headers):
        width = max([len(r[i]) for r in cells] + [1])
        shown = _header(header, width) if header else ""
        shown_widths.append(max([width, *(len(line) for line in shown.splitlines())]))
        numeric = all(_is_number(row[i]) for row in raw)
        table.add_column(shown, justify="right" if numeric else "left", no_wrap=True,
                         min_width=shown_widths[-1])
    for index, row in enumerate(cells):
        if index in sections:
            table.add_section()
        table.add_row(*(Text(value) for value in row))
    needed = sum(w + 3 for w in shown_widths) + 1  # one space each side, a border between
    out = Console(width=max(console.width, needed), file=console.file,
                  force_terminal=console.is_terminal)
    # title and caption as lines of their own: a table's title would wrap at its width
    if title:
        out.print(title, markup=False, highlight=False, soft_wrap=True)
    out.print(table)
    if caption:
        out.print(caption, markup=False, highlight=False, soft_wrap=True)
