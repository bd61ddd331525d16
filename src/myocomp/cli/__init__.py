"""Command-line interface: thin wrappers that parse options, call library functions and print.

Each module of this package registers its commands on :data:`myocomp.cli.app.app`. Every user
error (:class:`myocomp.errors.MyocompError`, a usage error such as a bad option type, a full
disk or a permission problem) is printed as exactly one stderr line starting ``error:`` with
exit code 2. Library warnings are captured (:func:`myocomp.cli.app.captured_warnings`) and go
into the command's provenance or log, not onto the terminal.
"""

from __future__ import annotations

import sys
import warnings

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_errors

from myocomp.cli import app as app_module
from myocomp.cli import batch, demo, imaging, phantom, segment, separate, study  # noqa: F401 (register commands)
from myocomp.cli.app import app
from myocomp.errors import MyocompError
from myocomp.io import now_utc, os_error_message


def _one_line(message: str) -> str:
    return "error: " + " ".join(str(message).split())


def _usage_line(exc: click_errors.UsageError) -> str:
    command = exc.ctx.command_path if exc.ctx is not None else "myocomp"
    return _one_line(f"{command}: {exc.format_message()} (see '{command} --help')")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 strict-mode failure, 2 user error).

    A malformed ``SOURCE_DATE_EPOCH`` is refused before any command runs: the outputs' time
    stamps read it (:func:`myocomp.io.now_utc`), and so does numpy's f2py, which scipy imports,
    with a traceback."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        app_module.CAPTURED[:] = []
        app_module.CAPTURED_SOURCE = caught
        try:
            now_utc()
            code = app(args=argv, prog_name="myocomp", standalone_mode=False)
        except click_errors.NoArgsIsHelpError as exc:
            typer.echo(exc.format_message())
            return 0
        except click_errors.UsageError as exc:
            typer.echo(_usage_line(exc), err=True)
            return 2
        except typer.Abort:
            typer.echo(_one_line("aborted"), err=True)
            return 130
        except click_errors.ClickException as exc:
            typer.echo(_one_line(exc.format_message()), err=True)
            return 2
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except MyocompError as exc:
            typer.echo(_one_line(str(exc)), err=True)
            return 2
        except OSError as exc:
            message = os_error_message(exc)
            if message is None:
                raise
            typer.echo(_one_line(message), err=True)
            return 2
        except MemoryError:
            typer.echo(_one_line("out of memory: the input is too large for this machine"), err=True)
            return 2
    return code if isinstance(code, int) else 0


def run() -> None:  # pragma: no cover - console entry point
    sys.exit(main())
