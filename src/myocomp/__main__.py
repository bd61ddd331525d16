"""`python -m myocomp` and the ``myocomp`` console script: the command-line interface."""

import gc
import sys

from myocomp import _startup


def run() -> None:  # pragma: no cover - console entry point
    """Import the command line (garbage collector paused and its objects frozen:
    :func:`~myocomp._startup.paused_gc`, as for the command's own imports), run it, and exit
    without the interpreter's final full collections: after :func:`gc.freeze` they skip every
    object instead of walking the ~10^6 that pandas and scipy made (~0.1 s of a quantify). The
    command's outputs are written and closed by then; objects are still freed by reference
    counting at exit, only garbage cycles are left to the operating system."""
    _startup.ONE_SHOT_PROCESS = True
    with _startup.paused_gc():
        from myocomp.cli import main
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
