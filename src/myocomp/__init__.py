"""myocomp: muscle composition from Dixon MRI and the chronic-back-pain study at cohort scale."""

from myocomp.errors import MyocompError

__all__ = ["MyocompError", "__version__"]


def __getattr__(name: str) -> str:
    """``__version__`` on first use (importlib.metadata costs ~0.1 s at start-up)."""
    if name != "__version__":
        raise AttributeError(f"module 'myocomp' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("myocomp")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
