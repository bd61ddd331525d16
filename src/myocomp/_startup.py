"""Process start-up of the command line: imports with the garbage collector paused, and quick
thread switches while threads read files and the main thread imports."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Set by the console entry point (:func:`myocomp.__main__.run`): this process runs one command
#: and exits, so :func:`paused_gc` freezes what its imports made. Calls of
#: :func:`myocomp.cli.main` inside a long-lived process (tests, notebooks) leave it False.
ONE_SHOT_PROCESS = False


@contextmanager
def paused_gc(freeze: bool | None = None) -> Iterator[None]:
    """Pause the cyclic garbage collector for a block of imports.

    Imports create hundreds of thousands of long-lived objects and almost no garbage cycles;
    collecting while they run costs ~0.1 s of a whole-body ``quantify``, and so would the first
    collections after it, which walk everything the block made. ``freeze`` (default
    :data:`ONE_SHOT_PROCESS`): on exit, move every object to the permanent generation
    (:func:`gc.freeze`), so that no later collection walks them; in a long-lived process this
    would keep garbage cycles alive, hence one-shot processes only. The collector is enabled
    again on exit if it was before.
    """
    freeze = ONE_SHOT_PROCESS if freeze is None else freeze
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


@contextmanager
def quick_thread_switches(interval_s: float = 5e-4) -> Iterator[None]:
    """Let a thread that wants the GIL have it after ``interval_s`` (Python's default: 5 ms).

    A thread that decodes a file gives up the GIL at every read of its input (every 512 KiB)
    and must win it back from a main thread that is busy importing: with the default interval
    that wait roughly doubles the time of reading two whole-body images. The interval is
    restored on exit.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
