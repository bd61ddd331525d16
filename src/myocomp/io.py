"""Reading and writing tables and JSON at the edges, atomically (temp file in the same folder + rename).

Commands that write several files stage them with :func:`staged_outputs` and commit them
together; :func:`check_output_paths` refuses, before any work, outputs that would overwrite an
input or each other, or that cannot be written. Files get the mode the user's umask gives.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from myocomp.errors import ConfigError, InputFileError, MyocompError

if TYPE_CHECKING:  # pandas is imported where a table is read (keeps it out of CLI start-up)
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".json")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask: from /proc/self/status where it exists (no change, safe beside threads),
    else set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def now_utc() -> datetime:
    """The time outputs are stamped with (UTC, to the second): now, or the time of the
    environment variable ``SOURCE_DATE_EPOCH`` (integer seconds since 1970-01-01 UTC, the
    reproducible-builds convention) when it is set, so that two runs write identical files.
    A malformed value raises :class:`ConfigError`."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    if not (value.isascii() and value.isdigit()):
        raise ConfigError(f"{value!r} is not an integer number of seconds since "
                          "1970-01-01 UTC", source="SOURCE_DATE_EPOCH")
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, OSError, ValueError):
        raise ConfigError(f"{value!r} is out of range", source="SOURCE_DATE_EPOCH") from None


def utc_timestamp() -> str:
    """:func:`now_utc` in ISO 8601, e.g. ``2025-01-31T12:00:00+00:00``."""
    return now_utc().isoformat()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_document(path: str | Path, what: str, *, toml: bool = False,
                  invalid: type[MyocompError] = InputFileError) -> Any:
    """Parse a JSON (or, with ``toml``, TOML) file that the user names: a missing file raises
    :class:`InputFileError` ``"<what> not found"``, one that does not parse ``invalid``
    ``"not valid JSON: <reason>"`` (or TOML)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} not found", source=path)
    try:
        text = path.read_text(encoding="utf-8")
        if toml:
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise invalid(f"not valid {'TOML' if toml else 'JSON'}: {exc}", source=path) from None


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically. NaN is written as null."""
    text = json.dumps(_nan_to_none(obj), indent=2, sort_keys=True, default=_json_default)
    return write_text(text + "\n", path)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a NIfTI image atomically (gzip-compressed when ``path`` ends in .gz)."""
    import nibabel as nib

    path = Path(path)
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=float))
    img.set_data_dtype(np.asarray(data).dtype)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    with atomic_path(path) as tmp:
        named = tmp.with_name(tmp.name + suffix)
        try:
            nib.save(img, str(named))
            named.replace(tmp)
        finally:
            named.unlink(missing_ok=True)
    return path


def write_bytes(payload: bytes, path: str | Path) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix (png, svg, pdf).

    PNGs carry no software/time metadata, so the same figure gives the same bytes.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                    metadata={"Software": None} if fmt == "png" else None)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` atomically; the format follows the suffix (.csv, .tsv, .parquet, .json)."""
    path = Path(path)
    writers: dict[str, Callable[[Path], None]] = {
        ".csv": lambda p: df.to_csv(p, index=False),
        ".tsv": lambda p: df.to_csv(p, index=False, sep="\t"),
        ".parquet": lambda p: df.to_parquet(p, index=False),
        ".json": lambda p: df.to_json(p, orient="records", indent=2, double_precision=15),
    }
    suffix = path.suffix.lower()
    if suffix not in writers:
        raise InputFileError(
            f"unsupported table format {suffix or '(none)'}; use one of {', '.join(TABLE_SUFFIXES)}",
            source=path,
        )
    with atomic_path(path) as tmp:
        writers[suffix](tmp)
    return path


def read_table(path: str | Path, *, text: bool = False) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table; raise :class:`InputFileError` naming the file on failure.

    ``text=True`` (phenotype tables): the cells of a CSV/TSV are read as strings, the separator
    of a .csv/.txt is sniffed (comma, semicolon, tab) and blanks after it skipped, so that the
    validation can read decimal commas and name each bad cell.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputFileError("file not found", source=path)
    suffix = path.suffix.lower()
    tab = suffix in (".tsv", ".tab")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if text and (tab or suffix in (".csv", ".txt")):
            return pd.read_csv(path, sep="\t" if tab else None, engine="python", dtype=str,
                               keep_default_na=True, skipinitialspace=True)
        if tab:
            return pd.read_csv(path, sep="\t")
        if suffix == ".csv":
            return pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad input file
        raise InputFileError(f"cannot read table ({type(exc).__name__}: {exc})", source=path) from exc
    raise InputFileError(f"unsupported table format {suffix or '(none)'}; use .csv, .tsv or .parquet", source=path)


# ------------------------------------------------------------------------------------------
# output safety: path checks before any work, staged multi-file outputs
# ------------------------------------------------------------------------------------------
def resolve(path: str | Path) -> Path:
    """Absolute path with ``~`` and symbolic links resolved (the file need not exist)."""
    return Path(path).expanduser().resolve(strict=False)


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: Path, folder: Path) -> bool:
    return child != folder and folder in child.parents


def check_output_paths(
    outputs: Mapping[str, str | Path | None],
    inputs: Mapping[str, str | Path | None] | None = None,
    *,
    folders: Iterable[str] = (),
) -> None:
    """Refuse (:class:`ConfigError`) outputs that would overwrite an input or each other.

    ``outputs`` / ``inputs``: option name (e.g. ``"--out"``) -> path (None entries are
    skipped). ``folders``: names of outputs that are folders. An output may not equal an input,
    a file output may not lie inside an input folder (e.g. a DICOM folder), an output folder
    may not be an input file, and no two outputs may coincide or nest. Then each output
    location is checked to be writable (:func:`check_writable`).
    """
    folders = set(folders)
    outs = {k: resolve(v) for k, v in outputs.items() if v is not None}
    ins = {k: resolve(v) for k, v in (inputs or {}).items() if v is not None}
    for name, out in outs.items():
        for in_name, inp in ins.items():
            if _same(out, inp):
                raise ConfigError(f"{name} is the same file as {in_name}; it would be overwritten",
                                  source=outputs[name])
            if inp.is_dir() and _inside(out, inp):
                raise ConfigError(f"{name} lies inside the input folder {in_name}",
                                  source=outputs[name])
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = outs[a], outs[b]
            if _same(pa, pb) or (a in folders and _inside(pb, pa)) or (b in folders and _inside(pa, pb)):
                raise ConfigError(f"{a} and {b} name the same location", source=outputs[a])
    for name in outs:
        check_writable(outputs[name], folder=name in folders)


def check_writable(path: str | Path, *, folder: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``path`` can be created or replaced by this process.

    The nearest existing ancestor must be a folder in which a temporary folder can be made
    (probed and removed at once, so nothing is left behind).
    """
    target = resolve(path)
    if target.is_dir() and not folder:
        raise ConfigError("is a folder; give a file name", source=path)
    if target.exists() and not target.is_dir() and folder:
        raise ConfigError("is a file; give a folder", source=path)
    base = target if folder and target.is_dir() else target.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"cannot be created: {base} is a file, not a folder", source=path)
    try:
        probe = tempfile.mkdtemp(prefix=".myocomp-probe-", dir=base)
        os.rmdir(probe)
    except OSError as exc:
        raise ConfigError(f"not writable ({exc.strerror or exc})", source=path) from None


class StagedOutputs:
    """Outputs of one command, written to temporary folders beside their targets first.

    :meth:`file` and :meth:`folder` hand out staging paths; :meth:`commit` renames every staged
    file onto its target; on any failure what this run wrote is removed and replaced files are
    restored. Paths listed in ``protect`` (the inputs) are never replaced.
    """

    def __init__(self, protect: Iterable[str | Path] = ()) -> None:
        self._protect = [resolve(p) for p in protect]
        self._stages: dict[Path, Path] = {}  # parent folder -> its staging folder
        self._files: list[tuple[Path, Path]] = []  # (staged, target)
        self._folders: list[tuple[Path, Path]] = []
        self._made: list[Path] = []  # folders this run created

    def _stage_in(self, parent: Path) -> Path:
        if parent not in self._stages:
            missing = [p for p in (parent, *parent.parents) if not p.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            self._made.extend(missing)
            self._stages[parent] = Path(tempfile.mkdtemp(prefix=".myocomp-stage-", dir=parent))
        return self._stages[parent]

    def file(self, target: str | Path) -> Path:
        """Staging path of the output file ``target``."""
        target = resolve(target)
        staged = self._stage_in(target.parent) / target.name
        self._files.append((staged, target))
        return staged

    def folder(self, target: str | Path) -> Path:
        """Staging folder whose contents are moved into the output folder ``target``."""
        target = resolve(target)
        staged = self._stage_in(target.parent) / f"{target.name}.d"
        staged.mkdir()
        self._folders.append((staged, target))
        return staged

    def _moves(self) -> list[tuple[Path, Path]]:
        moves = [(s, t) for s, t in self._files if s.exists()]
        for staged, target in self._folders:
            for f in sorted(staged.rglob("*")):
                if f.is_file() or f.is_symlink():
                    moves.append((f, target / f.relative_to(staged)))
        return moves

    def commit(self) -> None:
        """Rename every staged file onto its target, all or none."""
        moves = self._moves()
        for _, target in moves:
            if any(_same(target, p) for p in self._protect):
                raise ConfigError("output would overwrite an input; nothing was written",
                                  source=target)
        done: list[tuple[Path, Path | None]] = []  # (target, backup of the old file)
        mode = 0o666 & ~current_umask()
        try:
            for staged, target in moves:
                missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
                target.parent.mkdir(parents=True, exist_ok=True)
                self._made.extend(missing)
                backup = None
                if target.exists() and not target.is_dir():
                    backup = staged.with_name(staged.name + ".myocomp-old")
                    os.replace(target, backup)
                done.append((target, backup))
                os.chmod(staged, mode)
                os.replace(staged, target)
        except BaseException:
            for target, backup in reversed(done):
                target.unlink(missing_ok=True)
                if backup is not None and backup.exists():
                    os.replace(backup, target)
            raise

    def rollback(self) -> None:
        """Remove the staging folders and the folders this run created (if left empty)."""
        self.cleanup()
        for folder in sorted(set(self._made), key=lambda p: len(p.parts), reverse=True):
            with suppress(OSError):
                folder.rmdir()

    def target_of(self, path: str | Path) -> Path | None:
        """The output a staging path (or a file inside a staged folder) stands for, else None."""
        path = Path(path)
        for staged, target in self._files:
            if path == staged or path.parent == staged.parent and path.name.startswith(f".{staged.name}."):
                return target
        for staged, target in self._folders:
            if path == staged or staged in path.parents:
                return target / path.relative_to(staged)
        return None

    def first_target(self) -> Path | None:
        """The first output registered (names a failure whose file is unknown)."""
        targets = [t for _, t in self._folders] + [t for _, t in self._files]
        return targets[0] if targets else None

    def cleanup(self) -> None:
        """Remove the staging folders."""
        for stage in self._stages.values():
            shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_outputs(protect: Iterable[str | Path] = ()) -> Iterator[StagedOutputs]:
    """Context manager around :class:`StagedOutputs`: commit on success, roll back on error."""
    stage = StagedOutputs(protect)
    try:
        yield stage
        stage.commit()
    except OSError as exc:
        stage.rollback()
        target = stage.target_of(exc.filename) if exc.filename else stage.first_target()
        if target is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    except BaseException:
        stage.rollback()
        raise
    stage.cleanup()


#: errno values of OSError that are the user's environment (disk, permissions), not a bug
USER_OS_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "is a folder",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_message(exc: OSError) -> str | None:
    """One-line message of an OSError caused by the environment (full disk, permissions), else None."""
    reason = USER_OS_ERRORS.get(exc.errno or -1)
    if reason is None:
        return None
    where = exc.filename or ""
    return f"{where}: {reason}" if where else reason
