"""The `edgesplit` command: a typer app that registers one module per subcommand.

Owns exit codes (0 ok, 2 usage/config, 3 infeasible, 4 runtime failure) and `--debug`.
Imports `api` and the command modules; nothing imports this module.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from edgesplit.cli.groups import WorkflowGroup
from edgesplit.errors import EdgesplitError

app = typer.Typer(
    name="edgesplit",
    cls=WorkflowGroup,
    help=(
        "Split transformer inference across heterogeneous edge devices.\n\n"
        "Typical flow: `edgesplit profile` (measure a model) -> `edgesplit plan` (partition it "
        "over cluster.toml) -> `edgesplit simulate` / `edgesplit run` (or `edgesplit generate` "
        "for text generation). The capabilities beside it: `robust` (width split that survives "
        "failures), `offload` (camera -> edge server), `cosearch` (model x device search); "
        "`cluster` joins real machines. New here? `edgesplit demo`.\n\n"
        "Add `--debug` anywhere for tracebacks and DEBUG logs (EDGESPLIT_LOG=INFO sets the level)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # the installed distribution's

        typer.echo(f"edgesplit {version('edgesplit')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Split transformer inference across heterogeneous edge devices."""


def _register() -> None:
    # One line per command module; each module exposes `app` (a group) or `register(app)`.
    from edgesplit.cli import cluster as cluster_cli
    from edgesplit.cli import cosearch as cosearch_cli
    from edgesplit.cli import demo, env, offload, plan, profile, simulate
    from edgesplit.cli import generate as generate_cli
    from edgesplit.cli import quality as quality_cli
    from edgesplit.cli import robust as robust_cli
    from edgesplit.cli import run as run_cli
    from edgesplit.cli import serve as serve_cli
    from edgesplit.cli import testbed as testbed_cli

    profile.register(app)
    plan.register(app)
    simulate.register(app)
    demo.register(app)
    env.register(app)
    offload.register(app)
    robust_cli.register(app)
    cosearch_cli.register(app)
    run_cli.register(app)
    generate_cli.register(app)
    cluster_cli.register(app)
    testbed_cli.register(app)
    quality_cli.register(app)
    serve_cli.register(app)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(debug: bool) -> str:
    """EDGESPLIT_LOG in any case; an unknown name warns once and falls back to WARNING."""
    raw = os.environ.get("EDGESPLIT_LOG", "").strip()
    if not raw:
        return "DEBUG" if debug else "WARNING"
    if raw.upper() in _LEVELS:
        return raw.upper()
    print(
        f"warning: EDGESPLIT_LOG={raw!r} is not a level ({', '.join(_LEVELS[:4])}); using WARNING",
        file=sys.stderr,
    )
    return "WARNING"


def main() -> None:
    """Entry point: run the app, map edgesplit errors to exit codes without tracebacks."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    logging.basicConfig(level=_log_level(debug), format="%(levelname)s %(name)s: %(message)s")
    # Ray reads its auth mode when first imported, and registering commands may import it:
    # every edgesplit cluster (embedded, testbed, boards) uses token auth.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Weights load from local checkpoints in about a second: transformers' "Loading weights"
    # bar would only break up our tables (read when transformers is imported, later).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _register()
    try:
        # Standalone mode: typer/click print usage errors themselves and exit with code 2.
        app()
    except EdgesplitError as e:
        if debug:
            raise
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
