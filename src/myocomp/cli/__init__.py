"""Command-line interface: thin wrappers that parse options, call library functions and print.

Each module of this package registers its commands on :data:`myocomp.cli.app.app`. User errors
(:class:`myocomp.errors.MyocompError`) are printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import sys

import typer

from myocomp.cli import batch, demo, imaging, phantom, segment, study  # noqa: F401 (register commands)
from myocomp.cli.app import app
from myocomp.errors import MyocompError


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 strict-mode failure, 2 user error)."""
    try:
        app(args=argv, prog_name="myocomp")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MyocompError as exc:
        typer.echo("error: " + " ".join(str(exc).split()), err=True)
        return 2
    return 0


def run() -> None:  # pragma: no cover - console entry point
    sys.exit(main())
