"""The layer rule of DESIGN.md for the numerical core: no module of ``myocomp/imaging`` or
``myocomp/stats`` draws (imports matplotlib) or imports a layer above it, at module level or
inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import myocomp

SRC = Path(myocomp.__file__).parent
CORE = ("imaging", "stats")
FORBIDDEN = ("matplotlib", "myocomp.pipeline", "myocomp.study", "myocomp.cli", "myocomp.segment",
             "myocomp.synth")


def forbidden_imports(source: str, forbidden: tuple[str, ...] = FORBIDDEN) -> list[str]:
    """``"line: module"`` for every import of a ``forbidden`` package (or its submodules) in
    ``source``, wherever the statement stands (module level, function, class, ``if``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.ImportFrom):
            names = [f".{node.module or ''}"]  # relative: the package has none; flagged below
        else:
            continue
        for name in names:
            if name.startswith(".") or any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{node.lineno}: {name}")
    return found


def _core_files() -> list[Path]:
    return sorted(p for part in CORE for p in (SRC / part).rglob("*.py"))


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_core_module_neither_draws_nor_imports_upward(path):
    found = forbidden_imports(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(SRC.parent)} breaks the layer rule: " + "; ".join(found)


def test_the_rule_sees_every_kind_of_import():
    source = (
        "import numpy as np\n"
        "import matplotlib.pyplot as plt\n"
        "from myocomp.imaging.labels import get_profile\n"
        "def f():\n"
        "    from myocomp.study import report\n"
        "    import myocomp.cli.main\n"
        "class C:\n"
        "    from matplotlib import colors\n"
        "if True:\n"
        "    from myocomp.synth.phantom import make_phantom\n"
        "from myocomp.stats import glmm\n"
        "import myocomp.segmentation_like_name\n"
    )
    assert forbidden_imports(source) == [
        "2: matplotlib.pyplot", "5: myocomp.study", "6: myocomp.cli.main", "8: matplotlib",
        "10: myocomp.synth.phantom",
    ]


def test_the_core_is_where_the_rule_looks():
    files = {p.relative_to(SRC).as_posix() for p in _core_files()}
    assert {"imaging/dixon.py", "imaging/labels.py", "stats/glmm.py"} <= files
