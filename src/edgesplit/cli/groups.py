"""Click group classes that make the command tree read as one tool.

`WorkflowGroup` lists the top-level commands in the order of the workflow (profile → plan →
simulate → run → generate/serve → the other capabilities → cluster tools → demo/env), not in
registration order. `DefaultCommandGroup` runs a default subcommand when the first argument is
not a subcommand name, so `edgesplit generate --model M --prompt P` is `edgesplit generate run`.
"""

from __future__ import annotations

from typing import ClassVar

from typer._click.core import Context  # typer bundles its own click; its groups take this
from typer.core import TyperGroup

__all__ = ["WORKFLOW_ORDER", "DefaultCommandGroup", "WorkflowGroup"]

WORKFLOW_ORDER = (
    "profile",
    "profile-merge",
    "plan",
    "simulate",
    "run",
    "generate",
    "serve",
    "quality",
    "robust",
    "offload",
    "cosearch",
    "cluster",
    "testbed",
    "demo",
    "env",
)


class WorkflowGroup(TyperGroup):
    """Top-level commands in WORKFLOW_ORDER; unknown ones after, alphabetically."""

    def list_commands(self, ctx: Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


class DefaultCommandGroup(TyperGroup):
    """A group whose `default_command` runs when no subcommand name is given."""

    default_command: ClassVar[str] = "run"

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        helps = {"--help", "-h"}
        if args and args[0] not in self.commands and args[0] not in helps:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)
