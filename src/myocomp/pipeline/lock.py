"""An output-folder lock: one ``batch`` (or ``study``) writes into a folder at a time.

The lock is the file ``DIR/.myocomp.lock`` (JSON: run id, command, host, pid, start time),
created with ``O_EXCL``. While the run lasts, a background thread touches it every
:data:`HEARTBEAT_S` seconds. A second run on the same folder is refused with the holder's run id
and start time, unless the lock is stale: its process is gone (same host), or its heartbeat is
older than ``stale_after_s`` (another host, whose processes cannot be checked). A stale lock is
taken over, and :func:`output_lock` reports that through ``say``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from myocomp.errors import ConfigError

LOCK_NAME = ".myocomp.lock"
HEARTBEAT_S = 30.0
#: A lock of another host whose heartbeat is older than this (s) is stale.
STALE_AFTER_S = 600.0


class OutputLockedError(ConfigError):
    """The output folder is in use by another run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stale_reason(holder: dict[str, Any] | None, age_s: float, stale_after_s: float) -> str | None:
    """Why a lock held by ``holder`` (last heartbeat ``age_s`` seconds ago) is stale, or None."""
    if holder is None:
        return "unreadable lock file" if age_s > HEARTBEAT_S else None
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return f"process {pid} on this host is gone"
        return None
    if age_s > stale_after_s:
        return f"no heartbeat from host {holder.get('host')} for {age_s:.0f} s"
    return None


def _create(path: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    return True


def acquire(
    folder: str | Path,
    run_id: str,
    command: str,
    *,
    stale_after_s: float = STALE_AFTER_S,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Take the lock of ``folder`` (created if needed) or raise :class:`OutputLockedError`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder ({exc.strerror})", source=folder) from exc
    path = folder / LOCK_NAME
    record = {
        "run_id": run_id,
        "command": command,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for _ in range(3):
        if _create(path, record):
            return path
        holder = _read(path)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            continue
        reason = stale_reason(holder, age, stale_after_s)
        if reason is None:
            who = holder or {}
            raise OutputLockedError(
                f"in use by {who.get('command', 'another run')} run {who.get('run_id', '?')} "
                f"started {who.get('started_utc', '?')} (pid {who.get('pid', '?')} on "
                f"{who.get('host', '?')}); wait for it or use another --out",
                source=folder,
            )
        aside = path.with_name(f"{LOCK_NAME}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, aside)  # only one of several racing runs moves it
        except FileNotFoundError:
            continue
        aside.unlink(missing_ok=True)
        if say is not None:
            say(
                f"took over a stale lock of run {(holder or {}).get('run_id', '?')} in {folder} "
                f"({reason})"
            )
    raise OutputLockedError("could not take the lock (another run keeps taking it)", source=folder)


@contextmanager
def output_lock(
    folder: str | Path,
    run_id: str,
    command: str,
    *,
    stale_after_s: float = STALE_AFTER_S,
    say: Callable[[str], None] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block (see the module docstring). A folder that this
    call created and that is still empty at the end is removed again."""
    created = not Path(folder).exists()
    path = acquire(folder, run_id, command, stale_after_s=stale_after_s, say=say)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                os.utime(path)
            except OSError:
                return

    thread = threading.Thread(target=beat, name="myocomp-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(timeout=5)
        holder = _read(path)
        if holder is not None and holder.get("run_id") == run_id:
            path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                Path(folder).rmdir()  # only if empty
