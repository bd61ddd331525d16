"""myocomp: muscle composition from Dixon MRI and the chronic-back-pain study at cohort scale."""

from importlib.metadata import PackageNotFoundError, version

from myocomp.errors import MyocompError

try:
    __version__ = version("myocomp")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["MyocompError", "__version__"]
