"""Where terminal output goes: the terminal at its width, or a pipe or log file."""

from __future__ import annotations

import os

from rich.console import Console

#: Width of the output in a pipe or log file, where no terminal says how wide to be:
#: wide enough that a table is never cut, as nobody resizes a file.
PIPE_WIDTH = 200


def output_console() -> Console:
    """A console for the terminal, or, when the output is a pipe or a log file and the
    ``COLUMNS`` environment variable sets no width, one :data:`PIPE_WIDTH` wide."""
    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(width=PIPE_WIDTH)
