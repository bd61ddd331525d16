"""Errors a user can cause. The CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class MyocompError(Exception):
    """Base class of every error caused by user input (files, columns, options)."""

    def __init__(self, message: str, *, source: str | Path | None = None) -> None:
        self.source = None if source is None else str(source)
        super().__init__(f"{self.source}: {message}" if self.source else message)


class InputFileError(MyocompError):
    """A file is missing, unreadable, or not of the expected format."""


class GeometryError(MyocompError):
    """Images that must share a grid do not (shape, affine), or a geometry is invalid."""


class LabelError(MyocompError):
    """A label map or label profile is unusable (unknown profile, unknown ids, empty muscles)."""


class DataError(MyocompError):
    """A table has missing or misspelt columns, wrong types, or values out of range."""


class ConfigError(MyocompError):
    """A configuration file or option is invalid (unknown keys, wrong values)."""
