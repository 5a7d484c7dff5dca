"""A log record during a token stream starts on a fresh line; the stream's line is ended."""

from __future__ import annotations

import io
import logging

from rich.console import Console

from edgesplit.cli.stream import TokenStream


def test_log_records_never_land_mid_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)  # stderr and stdout meet on one terminal
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    log = logging.getLogger("edgesplit.test")
    try:
        stream = TokenStream(Console(file=out, width=200))
        with stream.open():
            stream.write("hi", style="bold")
            stream.write(" party-party")
            log.warning("[failover] b failed")
            stream.write("party [b]markup[/b]")
        log.warning("after")
    finally:
        root.removeHandler(handler)
    assert out.getvalue() == (
        "hi party-party\nWARNING [failover] b failed\nparty [b]markup[/b]\nWARNING after\n"
    )
    assert not handler.filters  # the filter went with the stream
