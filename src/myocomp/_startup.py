"""Process start-up of the command line: imports with the cyclic garbage collector paused."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc(freeze: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector for a block of imports.

    Imports create hundreds of thousands of long-lived objects and almost no garbage cycles;
    collecting while they run costs ~0.1 s of a whole-body ``quantify``. The collector is
    enabled again on exit if it was before. ``freeze``: also move every object to the permanent
    generation (:func:`gc.freeze`), so later full collections skip them; for the start of a
    one-shot process only (in a long-lived one it would keep garbage alive).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()
