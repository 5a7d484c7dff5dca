"""The `edgesplit` command: a typer app that registers one module per subcommand.

Owns exit codes (0 ok, 2 usage/config, 3 infeasible, 4 runtime failure) and `--debug`.
Imports `api` and the command modules; nothing imports this module.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from edgesplit.errors import EdgesplitError

app = typer.Typer(
    name="edgesplit",
    help=(
        "Split transformer inference across heterogeneous edge devices.\n\n"
        "Typical flow: `edgesplit profile` (measure a model) -> `edgesplit plan` (partition it "
        "over cluster.toml) -> `edgesplit simulate` / `edgesplit run`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # One line per command module; each module exposes `app` (a group) or `register(app)`.
    from edgesplit.cli import demo, env, offload, plan, profile, simulate

    profile.register(app)
    plan.register(app)
    simulate.register(app)
    demo.register(app)
    env.register(app)
    offload.register(app)


def main() -> None:
    """Entry point: run the app, map edgesplit errors to exit codes without tracebacks."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    logging.basicConfig(
        level=os.environ.get("EDGESPLIT_LOG", "DEBUG" if debug else "WARNING"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    _register()
    try:
        app(standalone_mode=False)
    except EdgesplitError as e:
        if debug:
            raise
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True)
        sys.exit(130)
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
