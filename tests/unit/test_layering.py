"""Imports point only downward (docs/architecture.md §1): an ast scan against an allow-list.

The scan sees every import form — `import edgesplit.x`, `from edgesplit.x import y`,
`from edgesplit import x`, relative imports and imports inside functions — in every module of the
package; an area with no entry in ALLOWED is itself a failure, so a new package must be placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "edgesplit"

# Which edgesplit areas each area may import (besides itself, errors, units and data).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "errors": set(),
    "units": set(),
    "envinfo": set(),
    "__init__": set(),
    "data": set(),
    "planners": {"core"},
    "sim": {"core"},
    "profile": {"core", "models"},
    "models": {"core"},
    "runtime": {"core", "models"},
    "offload": {"core", "models"},
    "cosearch": {"core", "models", "profile"},
    # Starts Ray nodes through the one bootstrap; its survey measures models in place on them.
    "testbed": {"core", "runtime", "models", "profile"},
    "plots": {"core", "sim"},
    "serving": {"core"},  # the HTTP front end; engines and tokenizers are injected by api
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
        "testbed",
        "serving",
        "data",
    },
    # [Note: cli-api] The CLI reaches every capability through `edgesplit.api` (imported inside
    # commands where heavy, so `edgesplit --help` stays fast) and uses core types for files;
    # never planners, runtime, models, profile, offload or cosearch directly.
    "cli": {"api", "core", "sim", "plots", "envinfo"},
}
ALWAYS_ALLOWED = {"errors", "units", "data"}  # leaves: no edgesplit imports of their own
TORCH_AREAS = {"models", "profile", "runtime", "offload", "cosearch", "testbed", "api", "cli"}
PURE_MODULES = {"offload/policy.py"}  # core only, no torch, although offload may use torch
RAY_MODULES = {
    "runtime/cluster.py",  # the one Ray bootstrap
    "offload/serve_ray.py",  # Ray Serve app of the offload server (not runtime's Ray)
}


def _area(relative: Path) -> str:
    return relative.parts[0].removesuffix(".py")


def _absolute(module: str | None, level: int, relative: Path) -> str:
    """`from ..x import y` inside edgesplit/a/b.py -> 'edgesplit.x'."""
    if level == 0:
        return module or ""
    base = ["edgesplit", *relative.parent.parts]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, module] if module else base)


def imports(path: Path, package: Path) -> list[tuple[str, int]]:
    """Every module a file imports, as dotted names; `from P import n` yields `P.n` too."""
    relative = path.relative_to(package)
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, relative)
            found.append((module, node.lineno))
            if module == "edgesplit":  # `from edgesplit import api` names a subpackage
                found += [(f"edgesplit.{alias.name}", node.lineno) for alias in node.names]
    return found


def violations(package: Path) -> list[str]:
    problems: list[str] = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        area = _area(relative)
        rel = relative.as_posix()
        allowed = {"core"} if rel in PURE_MODULES else ALLOWED.get(area)
        if allowed is None:
            problems.append(f"{rel}: area '{area}' has no entry in the layering allow-list")
            continue
        for module, line in imports(path, package):
            parts = module.split(".")
            top = parts[0]
            if top == "edgesplit":
                target = parts[1] if len(parts) > 1 else ""
                if target in ("", area) or target in ALWAYS_ALLOWED:
                    continue
                if target not in allowed:
                    problems.append(f"{rel}:{line} ({area}) imports edgesplit.{target}")
            elif top == "torch" and (area not in TORCH_AREAS or rel in PURE_MODULES):
                problems.append(f"{rel}:{line} ({area}) imports torch")
            elif top == "ray" and rel not in RAY_MODULES:
                problems.append(f"{rel}:{line} imports ray outside runtime/cluster.py")
            elif top in ("pickle", "cloudpickle", "dill"):
                problems.append(f"{rel}:{line} imports {top}")
    return problems


def test_imports_point_downward() -> None:
    problems = violations(PACKAGE)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_scan_sees_the_package() -> None:
    files = list(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    seen = {m for m, _ in imports(PACKAGE / "cli" / "generate.py", PACKAGE)}
    assert "edgesplit.api" in seen


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "edgesplit"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("cli/x.py", "from edgesplit import runtime\n", "imports edgesplit.runtime"),
        ("cli/x.py", "import edgesplit.planners.base\n", "imports edgesplit.planners"),
        ("cli/x.py", "def f():\n    from edgesplit.models import spec\n", "edgesplit.models"),
        ("core/x.py", "from ..runtime import stage\n", "imports edgesplit.runtime"),
        ("core/x.py", "from . import plan\nimport torch\n", "imports torch"),
        ("planners/x.py", "import ray\n", "imports ray outside"),
        ("offload/policy.py", "from edgesplit.models import spec\n", "edgesplit.models"),
        ("runtime/x.py", "import pickle\n", "imports pickle"),
        ("newarea/x.py", "x = 1\n", "no entry in the layering allow-list"),
    ],
)
def test_seeded_violation_is_caught(tmp_path: Path, name: str, source: str, expected: str) -> None:
    package = _tree(tmp_path, {name: source, "core/ok.py": "from edgesplit.core import plan\n"})
    problems = violations(package)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_clean_tree_passes(tmp_path: Path) -> None:
    package = _tree(
        tmp_path,
        {
            "cli/x.py": "from edgesplit import api\nfrom edgesplit.core.plan import Plan\n",
            "api/x.py": "from ..runtime import stage\nfrom edgesplit.errors import E\n",
            "core/x.py": "from . import plan\n",
        },
    )
    assert violations(package) == []
