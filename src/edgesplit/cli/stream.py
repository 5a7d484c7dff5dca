"""A token stream on stdout that log records never land in the middle of.

Tokens are printed without newlines; a warning logged meanwhile (a failover, a Ray notice) goes to
stderr, and on a terminal would continue the token line: `...party-WARNING edgesplit...`. While a
`TokenStream` is open, a filter on the root logger's handlers ends the token line first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

__all__ = ["TokenStream"]


class TokenStream:
    """Text printed piece by piece on one line; `open()` keeps log records off that line."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.mid_line = False

    def write(self, text: str, style: str | None = None) -> None:
        if not text:
            return
        self.console.print(text, end="", style=style, soft_wrap=True, highlight=False, markup=False)
        self.mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        if self.mid_line:
            self.console.print()
            self.mid_line = False

    def filter(self, record: logging.LogRecord) -> bool:
        """A logging filter: let every record through, on a fresh line."""
        self.end_line()
        return True

    @contextmanager
    def open(self) -> Iterator[TokenStream]:
        """Stream inside the block; the line is ended when it exits, however it exits."""
        handlers = list(logging.getLogger().handlers)
        for handler in handlers:
            handler.addFilter(self)
        try:
            yield self
        finally:
            for handler in handlers:
                handler.removeFilter(self)
            self.end_line()
