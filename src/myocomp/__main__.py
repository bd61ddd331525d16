"""`python -m myocomp` and the ``myocomp`` console script: the command-line interface."""

import sys

from myocomp._startup import paused_gc


def run() -> None:  # pragma: no cover - console entry point
    """Import the command line (garbage collector paused: :func:`paused_gc`) and run it."""
    with paused_gc(freeze=True):
        from myocomp.cli import main
    sys.exit(main())


if __name__ == "__main__":
    run()
