"""The one typer application. Command modules register themselves on ``app``."""

from __future__ import annotations

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
