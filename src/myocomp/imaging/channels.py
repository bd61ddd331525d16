"""The names of the Dixon channels: the one home of the vocabulary that the image readers
(NIfTI, DICOM, stations) and the manifest columns share. Dependency-free, so that the manifest
can use it without importing numpy."""

from __future__ import annotations

__all__ = ["CHANNELS"]

#: Dixon channels, in the order inputs are listed: water, fat, then the optional echoes.
CHANNELS: tuple[str, ...] = ("water", "fat", "in_phase", "opposed_phase")
