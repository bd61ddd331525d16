"""The style rule of the brief: no function (or method) in ``src/myocomp`` is longer than 80
lines, counted from its ``def`` (decorators excluded) to its last line, docstring included."""

from __future__ import annotations

import ast
from pathlib import Path

import myocomp

SRC = Path(myocomp.__file__).parent
LIMIT = 80


def function_lengths(source: str) -> list[tuple[int, str, int]]:
    """(first line, name, number of lines) of every function and method in ``source``."""
    return [
        (node.lineno, node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_counts_every_line_of_a_function_nested_ones_too():
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    source = f"def long():\n    '''doc'''\n{body}\n\n\nclass A:\n    def short(self):\n        def inner():\n            return 1\n        return inner\n"
    lengths = {name: n for _, name, n in function_lengths(source)}
    assert lengths == {"long": 92, "short": 4, "inner": 2}


def test_no_function_in_src_exceeds_the_limit():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50, "the package was not found"
    too_long = [
        f"{path.relative_to(SRC.parent)}:{line} {name} ({n} lines)"
        for path in files
        for line, name, n in function_lengths(path.read_text(encoding="utf-8"))
        if n > LIMIT
    ]
    assert not too_long, f"functions longer than {LIMIT} lines: " + "; ".join(too_long)
