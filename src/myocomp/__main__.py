"""``python -m myocomp``: the command-line interface."""

from myocomp.cli import run

run()
