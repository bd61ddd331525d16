"""Registry of supported segmentation models, and verified, atomic fetching into a cache.

This is the only module of myocomp that touches the network, and only when
:func:`fetch_model` is asked to download.

Cache: ``$MYOCOMP_HOME/models/<name>/`` (default ``MYOCOMP_HOME`` = the user cache directory
of platformdirs, ``myocomp``). Each installed model carries ``myocomp-model.json`` (source,
SHA-256, how it was verified, results folder). Checksums: where the publisher states a
SHA-256 it is checked; otherwise the hash seen on the first download is recorded in
``$MYOCOMP_HOME/known_hashes.json`` ("trust on first use") and later downloads of the same
URL must match it. Nothing is invented.

Atomicity: the archive is streamed to a temporary file beside the cache, verified, unpacked
into a temporary folder (zip members that would land outside it are refused) and renamed into
place; on any failure both are removed, so a model folder either is complete or does not exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from myocomp.errors import ConfigError, InputFileError, MyocompError
from myocomp.io import write_json

__all__ = [
    "MODELS",
    "FetchResult",
    "ModelFetchError",
    "ModelInfo",
    "cache_dir",
    "fetch_model",
    "find_results_folder",
    "get_model_info",
    "installed_path",
    "list_models",
    "resolve_model",
]

MARKER = "myocomp-model.json"
_CHUNK = 1 << 20


class ModelFetchError(MyocompError):
    """A model archive could not be downloaded, verified or unpacked."""


@dataclass(frozen=True)
class ModelInfo:
    """A supported model: where its publisher releases it and under which licence."""

    name: str
    title: str
    url: str | None
    sha256: str | None
    sha256_source: str
    licence: str
    licence_url: str
    homepage: str
    input_axcodes: str = "RAS"
    notes: str = ""
    shipped: str | None = None  # file name of an archive shipped inside myocomp.segment


MODELS: dict[str, ModelInfo] = {
    "mrsegmentator": ModelInfo(
        name="mrsegmentator",
        title="MRSegmentator v1.2 (40 structures in MRI/CT, nnU-Net v2, 5 folds)",
        url="https://github.com/hhaentze/MRSegmentator/releases/download/v1.2.0/weights.zip",
        sha256="dd26c1b511908a1f2a752b7fe8f5ca9c5603fc3e69fa52f57bf3ccdd52ceb286",
        sha256_source="stated by the publisher in MRSegmentator's src/mrsegmentator/config.py",
        licence="Apache-2.0",
        licence_url="https://github.com/hhaentze/MRSegmentator/blob/master/License.txt",
        homepage="https://github.com/hhaentze/MRSegmentator",
        # MRSegmentator's reader reorients every image to LPS (sitk.DICOMOrient) before nnU-Net.
        input_axcodes="LPS",
        notes="single channel (any MR contrast): myocomp feeds the in-phase image, else water+fat",
    ),
    "totalsegmentator_mr": ModelInfo(
        name="totalsegmentator_mr",
        title="TotalSegmentator total_mr, part 2 (muscles; Dataset851, nnU-Net v2)",
        url=(
            "https://github.com/wasserth/TotalSegmentator/releases/download/v2.5.0-weights/"
            "Dataset851_TotalSegMRI_part2_muscles_1088subj.zip"
        ),
        sha256=None,
        sha256_source="not published; recorded on first download",
        licence="Apache-2.0",
        licence_url="https://github.com/wasserth/TotalSegmentator/blob/master/LICENSE",
        homepage="https://github.com/wasserth/TotalSegmentator",
        # TotalSegmentator calls nib.as_closest_canonical before nnU-Net.
        input_axcodes="RAS",
        notes="the muscle part of total_mr (autochthon, iliopsoas, gluteal muscles)",
    ),
    "totalvibeseg": ModelInfo(
        name="totalvibeseg",
        title="TotalVibeSegmentator (NAKO/UK Biobank VIBE, dataset 85, nnU-Net v2)",
        url="https://github.com/robert-graf/TotalVibeSegmentator/releases/download/v1.0.0/085.zip",
        sha256=None,
        sha256_source="not published; recorded on first download",
        licence="not stated by the publisher (ask the authors before use)",
        licence_url="https://github.com/robert-graf/TotalVibeSegmentator",
        homepage="https://github.com/robert-graf/TotalVibeSegmentator",
        input_axcodes="RAS",
        notes=(
            "its second input channel is a body-ROI mask from the publisher's model 278; myocomp "
            "cannot supply it yet, so `segment` refuses this model with a clear error"
        ),
    ),
    "phantom-demo": ModelInfo(
        name="phantom-demo",
        title="myocomp phantom demo (tiny nnU-Net v2 model; VALID FOR PHANTOMS ONLY)",
        url=None,
        sha256=None,  # read from the shipped phantom-demo.json (written by the training script)
        sha256_source="phantom-demo.json shipped beside the archive",
        licence="Apache-2.0",
        licence_url="https://www.apache.org/licenses/LICENSE-2.0",
        homepage="scripts/train_phantom_demo.py",
        input_axcodes="RAS",
        notes="trained on myocomp.synth phantoms only; meaningless on real images",
        shipped="phantom-demo.zip",
    ),
}
_ALIASES = {"total_mr": "totalsegmentator_mr", "mrseg": "mrsegmentator", "demo": "phantom-demo"}

LICENCE_TEXT = {
    "Apache-2.0": (
        "Licensed under the Apache License, Version 2.0 "
        '(https://www.apache.org/licenses/LICENSE-2.0). Provided "AS IS", WITHOUT WARRANTIES '
        "OR CONDITIONS OF ANY KIND. Not a medical device; research use."
    ),
}


@dataclass(frozen=True)
class FetchResult:
    """Outcome of :func:`fetch_model`: where the model is and how its archive was verified."""

    name: str
    path: Path  # the nnU-Net results folder
    root: Path  # the installed model folder (contains MARKER)
    sha256: str
    verification: str  # "publisher", "recorded", "matched-recorded", "shipped", "none"
    licence: str
    already_installed: bool = False

    def message(self) -> str:
        """One-paragraph human summary (what the CLI prints)."""
        how = {
            "publisher": "matches the SHA-256 stated by the publisher",
            "shipped": "matches the SHA-256 of the archive shipped with myocomp",
            "recorded": "no SHA-256 is published for this archive: recorded the hash seen on "
            "this first download (later downloads must match it)",
            "matched-recorded": "matches the hash recorded on the first download",
            "given": "matches the SHA-256 given on the command line",
            "none": "not verified (no published or recorded hash)",
        }[self.verification]
        lic = LICENCE_TEXT.get(self.licence, self.licence)
        return f"{self.name}: {self.path}\nSHA-256 {self.sha256}: {how}\nLicence: {lic}"


def cache_dir() -> Path:
    """``$MYOCOMP_HOME`` or the user cache dir for myocomp (not created here)."""
    env = os.environ.get("MYOCOMP_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("myocomp"))


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name`` (aliases: total_mr, mrseg, demo); ConfigError if unknown."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[key]


def find_results_folder(root: Path) -> Path:
    """The nnU-Net v2 results folder inside ``root`` (dataset.json + plans.json + fold_*)."""
    candidates = []
    for ds in sorted(Path(root).rglob("dataset.json")):
        folder = ds.parent
        if (folder / "plans.json").is_file() and any(folder.glob("fold_*/checkpoint_final.pth")):
            candidates.append(folder)
    if not candidates:
        raise ModelFetchError(
            "no nnU-Net v2 results folder (dataset.json, plans.json, fold_*/checkpoint_final.pth)",
            source=root,
        )
    candidates.sort(key=lambda p: (len(p.relative_to(root).parts), str(p)))
    return candidates[0]


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def installed_path(name: str, home: Path | None = None) -> Path | None:
    """Results folder of an installed registry model, or None."""
    info = get_model_info(name)
    root = (home or cache_dir()) / "models" / info.name
    marker = _read_marker(root)
    if marker is None:
        return None
    path = root / marker.get("results_folder", ".")
    return path if (path / "dataset.json").is_file() else None


def list_models(home: Path | None = None) -> list[dict]:
    """One dict per registry model: name, installed (path or None), licence, source, title."""
    rows = []
    for info in MODELS.values():
        path = installed_path(info.name, home)
        rows.append(
            {
                "name": info.name,
                "installed": str(path) if path else None,
                "licence": info.licence,
                "source": info.url or f"shipped with myocomp ({info.shipped})",
                "sha256": _expected_sha256(info),
                "title": info.title,
            }
        )
    return rows


def registry_axcodes_for(model_dir: Path) -> str | None:
    """Input orientation of a registry model installed at ``model_dir`` (None if not one)."""
    for parent in [Path(model_dir), *Path(model_dir).parents]:
        marker = _read_marker(parent)
        if marker is not None:
            name = marker.get("name")
            return MODELS[name].input_axcodes if name in MODELS else None
    return None


def _shipped_archive(info: ModelInfo) -> Path:
    assert info.shipped
    return Path(str(resources.files("myocomp.segment").joinpath(info.shipped)))


def _expected_sha256(info: ModelInfo) -> str | None:
    """The registry's SHA-256, or for a shipped archive the one in its JSON sidecar."""
    if info.sha256 or not info.shipped:
        return info.sha256
    sidecar = _shipped_archive(info).with_suffix(".json")
    try:
        return str(json.loads(sidecar.read_text())["sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFetchError(f"cannot read the shipped checksum ({exc})", source=sidecar) from None


def resolve_model(model: str | Path, home: Path | None = None) -> Path:
    """Results folder for a folder path or a registry name; never downloads.

    A folder is used as is (or searched for a results folder inside). A registry name resolves
    to its installed copy; ``phantom-demo`` is installed from the archive shipped with myocomp
    on first use. Anything else raises ConfigError naming ``myocomp models fetch``.
    """
    path = Path(model)
    if path.is_dir():
        if (path / "dataset.json").is_file():
            return path
        return find_results_folder(path)
    if isinstance(model, Path) or os.sep in str(model):
        raise InputFileError("model folder not found", source=path)
    info = get_model_info(str(model))
    found = installed_path(info.name, home)
    if info.shipped:
        # the cached copy must be the archive this myocomp ships (reinstall after an upgrade)
        root = (home or cache_dir()) / "models" / info.name
        marker = _read_marker(root) if found is not None else None
        if marker is None or marker.get("sha256") != _expected_sha256(info):
            return fetch_model(info.name, home=home, force=found is not None).path
    if found is not None:
        return found
    raise ConfigError(
        f"model {info.name!r} is not installed; run `myocomp models fetch {info.name}` "
        f"(or `--from-file ARCHIVE` on a machine without internet)"
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(
    url: str, dest: Path, progress: Callable[[int, int | None], None] | None, timeout: float
) -> str:
    """Stream ``url`` into ``dest``; return its SHA-256. ModelFetchError on any failure."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "myocomp-model-fetch"})
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as fh:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(received, total)
    except urllib.error.HTTPError as exc:
        raise ModelFetchError(
            f"download failed: HTTP {exc.code} {exc.reason}", source=url
        ) from None
    except http.client.IncompleteRead as exc:
        raise ModelFetchError(
            f"download truncated: received {received + len(exc.partial)} bytes, "
            f"server announced more",
            source=url,
        ) from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelFetchError(f"download failed: {reason}", source=url) from None
    if total is not None and received != total:
        raise ModelFetchError(
            f"download truncated: received {received} of {total} bytes", source=url
        )
    if received == 0:
        raise ModelFetchError("download failed: empty response", source=url)
    return digest.hexdigest()


def _safe_extract(archive: Path, target: Path) -> None:
    """Unpack a zip into ``target``, refusing members that would escape it (or links)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            base = target.resolve()
            for member in zf.infolist():
                name = member.filename
                dest = (base / name).resolve()
                if (
                    name.startswith(("/", "\\"))
                    or ".." in Path(name).parts
                    or (dest != base and base not in dest.parents)
                ):
                    raise ModelFetchError(
                        f"archive member {name!r} escapes the target folder", source=archive
                    )
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ModelFetchError(
                        f"archive member {name!r} is a symbolic link", source=archive
                    )
            bad = zf.testzip()
            if bad is not None:
                raise ModelFetchError(f"archive member {bad!r} is corrupt", source=archive)
            zf.extractall(base)
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"not a valid zip archive ({exc})", source=archive) from None


def _known_hashes_path(home: Path) -> Path:
    return home / "known_hashes.json"


def _load_known(home: Path) -> dict:
    try:
        return json.loads(_known_hashes_path(home).read_text())
    except (OSError, ValueError):
        return {}


def _record_known(home: Path, key: str, sha: str) -> None:
    known = _load_known(home)
    known[key] = sha
    write_json(known, _known_hashes_path(home))


def fetch_model(
    name: str,
    *,
    to: str | Path | None = None,
    from_file: str | Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    home: Path | None = None,
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    timeout: float = 60.0,
) -> FetchResult:
    """Download (or take from ``from_file``), verify, unpack and install a registry model.

    Parameters
    ----------
    name : registry name (``myocomp models list``).
    to : install folder (default ``cache_dir()/models/<name>``); must not exist or be empty.
    from_file : a local copy of the archive (machines without internet); no network.
    url : download from this URL instead of the registry's (mirror, tests).
    sha256 : expected SHA-256 (overrides the registry's; e.g. a mirror's published hash).
    home : cache root (default :func:`cache_dir`).
    force : reinstall even when installed.
    progress : called as ``progress(bytes_received, total_or_None)`` while downloading.

    Returns a :class:`FetchResult`; raises :class:`ModelFetchError` (nothing left behind) on a
    failed download, a checksum mismatch, a bad archive or an archive without a results folder.
    """
    info = get_model_info(name)
    home = Path(home) if home is not None else cache_dir()
    root = Path(to) if to is not None else home / "models" / info.name
    installed = _installed(info, root, force)
    if installed is not None:
        return installed
    root.parent.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)

    expected = sha256.lower() if sha256 else _expected_sha256(info)
    temporary: list[Path] = []
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{info.name}-", suffix=".partial", dir=root.parent))
    tmp_dir.chmod(0o755)  # mkdtemp makes it private; the installed model is an ordinary folder
    try:
        archive, seen, origin = _obtain_archive(info, from_file, url, root.parent, progress, timeout,
                                                temporary)
        verification = _verify_archive(info, seen, expected, bool(sha256), home, origin)
        marker = _install(archive, tmp_dir, root, info, origin, seen, verification)
        if verification == "recorded" and info.url:
            _record_known(home, info.url, seen)
    finally:
        for tmp_file in temporary:
            with contextlib.suppress(OSError):
                tmp_file.unlink()
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return FetchResult(info.name, root / marker["results_folder"], root, seen, verification, info.licence)


def _installed(info: ModelInfo, root: Path, force: bool) -> FetchResult | None:
    """The install already at ``root`` (None if there is none or ``force``); raises if ``root``
    holds something else."""
    if not root.exists() or force:
        return None
    marker = _read_marker(root)
    if marker is not None and (root / marker.get("results_folder", ".")).is_dir():
        return FetchResult(info.name, root / marker["results_folder"], root, marker.get("sha256", ""),
                           marker.get("verification", "none"), info.licence, already_installed=True)
    if any(root.iterdir()):
        raise ModelFetchError("install folder exists and is not an installed model", source=root)
    return None


def _obtain_archive(info: ModelInfo, from_file, url, parent: Path, progress, timeout: float,
                    temporary: list[Path]) -> tuple[Path, str, str]:
    """The archive (a local file, the shipped copy or a download into ``parent``, whose temporary
    file is appended to ``temporary``), its SHA-256 and its origin."""
    if from_file is not None:
        archive = Path(from_file)
        if not archive.is_file():
            raise InputFileError("archive not found", source=archive)
        return archive, _sha256_file(archive), str(archive.resolve())
    if info.shipped and url is None:
        archive = _shipped_archive(info)
        return archive, _sha256_file(archive), f"shipped:{info.shipped}"
    source_url = url or info.url
    if not source_url:
        raise ModelFetchError(f"model {info.name!r} has no download URL; use --from-file")
    fd, name_tmp = tempfile.mkstemp(prefix=f".{info.name}-", suffix=".download", dir=parent)
    os.close(fd)
    temporary.append(Path(name_tmp))
    return Path(name_tmp), _download(source_url, Path(name_tmp), progress, timeout), source_url


def _verify_archive(info: ModelInfo, seen: str, expected: str | None, given: bool, home: Path,
                    origin: str) -> str:
    """How the archive's hash ``seen`` was verified against ``expected`` (``given`` by the user,
    ``shipped``, ``publisher``) or, without one, against the hash recorded on the first download
    (``matched-recorded``, ``recorded``); raises :class:`ModelFetchError` on a mismatch."""
    if expected:
        if seen != expected:
            raise ModelFetchError(f"SHA-256 mismatch: expected {expected}, got {seen} (archive discarded)",
                                  source=origin)
        return "given" if given else ("shipped" if info.shipped else "publisher")
    recorded = _load_known(home).get(info.url) if info.url else None
    if recorded and recorded != seen:
        raise ModelFetchError(
            f"SHA-256 {seen} differs from the hash recorded on the first download "
            f"({recorded}); archive discarded",
            source=origin,
        )
    return "matched-recorded" if recorded else "recorded"


def _install(archive: Path, tmp_dir: Path, root: Path, info: ModelInfo, origin: str, seen: str,
             verification: str) -> dict:
    """Unpack ``archive`` into ``tmp_dir``, write the install marker and move it to ``root``
    (replacing an old install); returns the marker."""
    _safe_extract(archive, tmp_dir)
    results = find_results_folder(tmp_dir)
    marker = {
        "name": info.name,
        "origin": origin,
        "sha256": seen,
        "verification": verification,
        "results_folder": str(results.relative_to(tmp_dir)),
        "licence": info.licence,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp_dir / MARKER).write_text(json.dumps(marker, indent=2))
    if root.exists():
        old = root.with_name(root.name + f".old-{os.getpid()}")
        os.replace(root, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp_dir, root)
    return marker
