"""`edgesplit.api` is typed for real: no `Any` in any signature of any capability module.

An ast scan (annotations under TYPE_CHECKING included), so it needs nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "src" / "edgesplit" / "api"


def _any_in(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id == "Any":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "Any":
            return True
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and _any_in(ast.parse(str(node.value), mode="eval").body):  # "dict[str, Any]"
            return True
    return False


def offenders(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            annotations = [a.annotation for a in every if a is not None] + [node.returns]
            if any(_any_in(a) for a in annotations):
                found.append(f"{node.name} (line {node.lineno})")
    return found


@pytest.mark.parametrize("path", sorted(API.glob("*.py")), ids=lambda p: p.stem)
def test_no_any_in_signatures(path: Path) -> None:
    assert offenders(path.read_text()) == []


def test_the_scan_catches_any() -> None:
    assert offenders("def f(x: Any) -> int: ...") == ["f (line 1)"]
    assert offenders("def g(*a: int) -> 'dict[str, typing.Any]': ...") == ["g (line 1)"]
    assert offenders("def h(**k: list[Any]) -> None: ...") == ["h (line 1)"]
    assert offenders("def ok(x: int) -> dict[str, float]: ...") == []
