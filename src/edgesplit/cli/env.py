"""`edgesplit env`: the machine, load and versions (what benchmark results embed)."""

from __future__ import annotations

import json

import typer

from edgesplit.cli.common import console
from edgesplit.envinfo import environment

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("env")
    def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Print machine, load, thread settings and package versions."""
        report = environment()
        if as_json:
            print(json.dumps(report, indent=2, sort_keys=True))
            return
        for key, value in report.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            console.print(f"[bold]{key}[/]: {value}")
