"""Lines of a package folder at a git revision: all lines, and code lines (a line holding a
token other than a comment, outside docstrings). Used for #15's runtime/ before/after figure.

    python scripts/count_lines.py HEAD src/edgesplit/runtime
    python scripts/count_lines.py 6c527b0 src/edgesplit/runtime
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize

_SKIP = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}


def code_lines(source: str) -> int:
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, kinds) and node.body:
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                end = first.end_lineno or first.lineno
                docstrings.update(range(first.lineno, end + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _SKIP:
            lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docstrings)
    return len(lines)


def main(revision: str, folder: str) -> None:
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", revision, folder],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    total = code = files = 0
    for name in names:
        if not name.endswith(".py"):
            continue
        source = subprocess.run(
            ["git", "show", f"{revision}:{name}"], capture_output=True, text=True, check=True
        ).stdout
        files += 1
        total += len(source.splitlines())
        code += code_lines(source)
    print(f"{folder} at {revision}: {files} files, {total} lines, {code} code lines")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
