"""nibabel, set up for fast NIfTI reading: ISA-L gzip decoding and no eager pydicom import.

- ``.nii.gz`` files are read through ``isal.igzip`` (ISA-L, 2-3x faster than zlib, and it
  releases the GIL, so channels read in threads decompress in parallel) when ``isal`` is
  installed, via nibabel's documented opener registry :attr:`nibabel.openers.ImageOpener.compress_ext_map`.
  Writing is unchanged (nibabel's own gzip).
- nibabel imports the optional pydicom eagerly (only to decode DICOM header extensions of
  NIfTI files, which myocomp never reads); that costs ~0.3-1 s per process. pydicom is hidden
  while nibabel is imported, then unhidden, so a later ``import pydicom`` works as usual.
"""

from __future__ import annotations

import sys
import zlib

if "nibabel" not in sys.modules and "pydicom" not in sys.modules:
    sys.modules["pydicom"] = None  # type: ignore[assignment]  # makes "import pydicom" fail
    try:
        import nibabel as nib
    finally:
        del sys.modules["pydicom"]
else:  # pragma: no cover - nibabel already imported by someone else
    import nibabel as nib

from nibabel import openers

try:
    from isal import igzip, isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; plain zlib still works
    igzip = None

_PIECE = 8 << 20
_NIBABEL_GZ = openers.ImageOpener.compress_ext_map[".gz"]

if igzip is not None:

    class _IGzipFile(igzip.IGzipFile):
        """ISA-L gzip reader whose decoding errors are :class:`zlib.error`, as with zlib, and
        whose ``readinto`` fills the buffer in 8 MiB pieces (the inherited one reads the whole
        request into a temporary first: twice the image in memory while nibabel loads it)."""

        def read(self, *args):
            try:
                return super().read(*args)
            except isal_zlib.error as exc:
                raise zlib.error(str(exc)) from exc

        def readinto(self, buffer):
            view = memoryview(buffer).cast("B")
            done = 0
            try:
                while done < len(view):
                    n = super().readinto(view[done : done + _PIECE])
                    if not n:
                        break
                    done += n
            except isal_zlib.error as exc:
                raise zlib.error(str(exc)) from exc
            return done


def _gzip_open(filename, mode="rb", compresslevel=1, mtime=0, keep_open=False):
    """Open a gzip file: ISA-L for reading, nibabel's own opener for writing."""
    if igzip is not None and "r" in mode:
        return _IGzipFile(filename, "rb")
    return _NIBABEL_GZ[0](filename, mode=mode, compresslevel=compresslevel, mtime=mtime, keep_open=keep_open)


openers.ImageOpener.compress_ext_map[".gz"] = (_gzip_open, ("mode", "compresslevel", "mtime", "keep_open"))

__all__ = ["nib"]
