"""The one typer application. Command modules register themselves on ``app``."""

from __future__ import annotations

import warnings

import typer

app = typer.Typer(
    name="myocomp",
    help="Muscle composition from Dixon MRI and the chronic-back-pain study, at cohort scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts mention TOML tables like [columns] literally
)


def _version(value: bool) -> None:
    if value:
        from myocomp import __version__

        typer.echo(f"myocomp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """myocomp: images -> muscle metrics -> the CBP study."""


#: warnings recorded while the current command runs (filled by :func:`myocomp.cli.main`)
CAPTURED: list[str] = []
CAPTURED_SOURCE: list[warnings.WarningMessage] = []


def captured_warnings() -> list[str]:
    """Library warnings of the running command, one line each (``Category: message``), deduplicated."""
    lines = [f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in CAPTURED_SOURCE]
    return list(dict.fromkeys(CAPTURED + lines))
