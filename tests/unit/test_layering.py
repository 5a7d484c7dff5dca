"""Imports point only downward (ARCHITECTURE.md §2, STYLE.md): an ast scan against an allow-list."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "edgesplit"

# Which edgesplit areas each area may import (besides itself, errors and units).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "planners": {"core"},
    "sim": {"core"},
    "profile": {"core", "models"},
    "models": {"core"},
    "runtime": {"core", "models"},
    "offload": {"core", "models"},
    "cosearch": {"core", "models", "profile"},
    "plots": {"core", "sim"},
    "api": {
        "core",
        "planners",
        "sim",
        "profile",
        "models",
        "runtime",
        "offload",
        "cosearch",
        "plots",
    },
    "envinfo": set(),
    "api_robust": {"core", "planners", "models", "runtime"},
    # [Note: cli-facades] The CLI reaches the pipeline capability through `api`, the robust split
    # through `api_robust`, and A-MOT / EdgeTran through their packages' public modules
    # (imported inside commands, so `edgesplit --help` stays fast); never planners, runtime,
    # models or profile directly.
    "cli": {"api", "api_robust", "core", "sim", "plots", "cli", "envinfo", "offload", "cosearch"},
}
TORCH_AREAS = {"models", "profile", "runtime", "offload", "cosearch", "api", "cli"}
PURE_MODULES = {"offload/policy.py"}  # core only, no torch, although offload may use torch


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def _area(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem


def test_imports_point_downward() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        area = _area(path)
        relative = str(path.relative_to(PACKAGE))
        for module, line in _imports(path):
            top = module.split(".")[0]
            if top == "edgesplit":
                parts = module.split(".")
                target = parts[1] if len(parts) > 1 else ""
                if target in ("", "errors", "units", area, "__init__"):
                    continue
                allowed = ALLOWED.get(area)
                if relative in PURE_MODULES:
                    allowed = {"core"}
                if allowed is not None and target not in allowed:
                    problems.append(f"{relative}:{line} ({area}) imports edgesplit.{target}")
            elif top == "torch" and (area not in TORCH_AREAS or relative in PURE_MODULES):
                problems.append(f"{relative}:{line} ({area}) imports torch")
            elif top == "ray" and relative not in (
                "runtime/cluster.py",
                "offload/serve_ray.py",  # Ray Serve app of the offload server (not runtime's Ray)
            ):
                problems.append(f"{relative}:{line} imports ray outside runtime/cluster.py")
            elif top in ("pickle", "cloudpickle", "dill"):
                problems.append(f"{relative}:{line} imports {top}")
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_scan_sees_the_package() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 20
    assert ("edgesplit.core.cost", 8) not in _imports(PACKAGE / "core" / "cost.py")  # sanity
