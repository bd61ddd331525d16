"""`python -m myocomp`: the command-line interface."""

from myocomp.cli import run

if __name__ == "__main__":
    run()
