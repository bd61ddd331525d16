"""Model registry and fetching: against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import pytest

from myocomp.cli import main
from myocomp.errors import ConfigError, MyocompError
from myocomp.segment import models
from myocomp.segment.models import ModelFetchError, fetch_model, list_models, resolve_model


def _archive(extra: dict[str, bytes] | None = None, folder: str = "Dataset1_x/tr__p__3d") -> bytes:
    files = {
        f"{folder}/dataset.json": json.dumps(
            {"channel_names": {"0": "water", "1": "fat"}, "labels": {"background": 0, "a": 1}}
        ).encode(),
        f"{folder}/plans.json": b"{}",
        f"{folder}/fold_0/checkpoint_final.pth": b"not really a checkpoint",
    }
    files.update(extra or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in files.items():
            zf.writestr(name, payload)
    return buf.getvalue()


class _Server:
    """Serves ``routes[path] = (status, body, declared_length_or_None)``."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                status, body, declared = routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header(
                    "Content-Length", str(declared if declared is not None else len(body))
                )
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "myocomp_home"
    monkeypatch.setenv("MYOCOMP_HOME", str(h))
    return h


def _leftovers(home: Path) -> list[str]:
    base = home / "models"
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


def test_download_records_hash_on_first_use_and_installs(server, home):
    body = _archive()
    server.routes["/w.zip"] = (200, body, None)
    seen = []
    res = fetch_model(
        "total_mr", url=server.url("/w.zip"), progress=lambda d, t: seen.append((d, t))
    )
    assert res.verification == "recorded"
    assert res.sha256 == hashlib.sha256(body).hexdigest()
    assert res.path == home / "models" / "totalsegmentator_mr" / "Dataset1_x" / "tr__p__3d"
    assert (res.path / "fold_0" / "checkpoint_final.pth").is_file()
    assert seen and seen[-1] == (len(body), len(body))
    known = json.loads((home / "known_hashes.json").read_text())
    assert known[models.MODELS["totalsegmentator_mr"].url] == res.sha256
    assert "recorded the hash" in res.message() and "Apache" in res.message()
    assert resolve_model("totalsegmentator_mr") == res.path
    assert _leftovers(home) == ["totalsegmentator_mr"]
    # a second call is a no-op
    assert fetch_model("totalsegmentator_mr", url=server.url("/w.zip")).already_installed


def test_later_download_must_match_recorded_hash(server, home):
    server.routes["/w.zip"] = (200, _archive(), None)
    first = fetch_model("totalsegmentator_mr", url=server.url("/w.zip"))
    server.routes["/w.zip"] = (200, _archive({"x/extra.txt": b"tampered"}), None)
    with pytest.raises(ModelFetchError, match="recorded on the first download"):
        fetch_model("totalsegmentator_mr", url=server.url("/w.zip"), force=True)
    # the installed model is untouched, and no temporary files remain
    assert (first.path / "dataset.json").is_file()
    assert _leftovers(home) == ["totalsegmentator_mr"]


def test_publisher_checksum_mismatch_leaves_nothing(server, home):
    server.routes["/w.zip"] = (200, _archive(), None)
    with pytest.raises(ModelFetchError, match="SHA-256 mismatch"):
        fetch_model("mrsegmentator", url=server.url("/w.zip"))  # registry hash is the publisher's
    assert _leftovers(home) == []


def test_given_checksum_verified(server, home):
    body = _archive()
    server.routes["/w.zip"] = (200, body, None)
    res = fetch_model(
        "mrsegmentator", url=server.url("/w.zip"), sha256=hashlib.sha256(body).hexdigest()
    )
    assert res.verification == "given"
    assert models.installed_path("mrsegmentator") == res.path


def test_truncated_download_is_an_error(server, home):
    body = _archive()
    server.routes["/w.zip"] = (200, body[:200], len(body))
    with pytest.raises(ModelFetchError, match="truncated"):
        fetch_model("totalsegmentator_mr", url=server.url("/w.zip"))
    assert _leftovers(home) == []
    assert not (home / "known_hashes.json").exists()


def test_http_404_is_an_error(server, home):
    with pytest.raises(ModelFetchError, match="HTTP 404"):
        fetch_model("totalsegmentator_mr", url=server.url("/missing.zip"))
    assert _leftovers(home) == []


def test_unreachable_server_is_an_error(home):
    with pytest.raises(ModelFetchError, match="download failed"):
        fetch_model("totalsegmentator_mr", url="http://127.0.0.1:9/none.zip", timeout=5)
    assert _leftovers(home) == []


def test_path_traversal_refused(tmp_path, home):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(_archive({"../../evil.txt": b"x"}))
    with pytest.raises(ModelFetchError, match="escapes"):
        fetch_model("totalsegmentator_mr", from_file=bad)
    assert not (home / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert _leftovers(home) == []


def test_archive_without_results_folder_refused(tmp_path, home):
    arc = tmp_path / "empty.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(ModelFetchError, match="no nnU-Net v2 results folder"):
        fetch_model("totalsegmentator_mr", from_file=arc)
    assert _leftovers(home) == []


def test_not_a_zip_refused(tmp_path, home):
    arc = tmp_path / "junk.zip"
    arc.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFetchError, match="not a valid zip"):
        fetch_model("totalsegmentator_mr", from_file=arc)
    assert _leftovers(home) == []


def test_from_file_to_folder(tmp_path, home):
    arc = tmp_path / "w.zip"
    arc.write_bytes(_archive())
    res = fetch_model("totalsegmentator_mr", from_file=arc, to=tmp_path / "mymodel")
    assert res.root == tmp_path / "mymodel"
    assert resolve_model(tmp_path / "mymodel") == res.path  # a folder is searched for the model
    assert _leftovers(home) == []


def test_unknown_and_uninstalled_models(home):
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model("nosuchmodel")
    with pytest.raises(ConfigError, match="myocomp models fetch mrsegmentator"):
        resolve_model("mrsegmentator")
    with pytest.raises(MyocompError, match="not found"):
        resolve_model(str(home / "no" / "such" / "dir"))


def test_registry_has_real_sources_and_licences():
    rows = {r["name"]: r for r in list_models()}
    assert set(rows) == {"mrsegmentator", "totalsegmentator_mr", "totalvibeseg", "phantom-demo"}
    for name in ("mrsegmentator", "totalsegmentator_mr", "totalvibeseg"):
        assert rows[name]["source"].startswith("https://github.com/")
        assert rows[name]["licence"]
    # only the publisher-stated hash is stored; the others are recorded on first download
    assert models.MODELS["mrsegmentator"].sha256 is not None
    assert models.MODELS["totalsegmentator_mr"].sha256 is None
    assert models.MODELS["totalvibeseg"].sha256 is None


def test_cli_fetch_list_and_errors(server, home, tmp_path, capsys):
    server.routes["/w.zip"] = (200, _archive(), None)
    assert main(["models", "fetch", "totalsegmentator_mr", "--url", server.url("/w.zip")]) == 0
    out = capsys.readouterr().out
    assert "installed" in out and "Licence" in out and "recorded the hash" in out
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mrsegmentator", "totalsegmentator_mr", "totalvibeseg", "phantom-demo"):
        assert name in out
    installed = {r["name"]: r["installed"] for r in list_models()}
    assert installed["totalsegmentator_mr"] and installed["mrsegmentator"] is None
    assert main(["models", "fetch", "totalvibeseg", "--url", server.url("/gone.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "HTTP 404" in err and "Traceback" not in err
    assert _leftovers(home) == ["totalsegmentator_mr"]


def test_stale_shipped_model_is_reinstalled(home):
    first = resolve_model("phantom-demo")  # installs the shipped archive, no network
    marker_path = first.parent / models.MARKER
    marker = json.loads(marker_path.read_text())
    assert marker["verification"] == "shipped"
    # simulate a copy installed by an older myocomp with another demo archive
    marker["sha256"] = "0" * 64
    marker_path.write_text(json.dumps(marker))
    (first / "fold_0" / "checkpoint_final.pth").write_bytes(b"old weights")
    again = resolve_model("phantom-demo")
    assert json.loads((again.parent / models.MARKER).read_text())["sha256"] != "0" * 64
    assert (again / "fold_0" / "checkpoint_final.pth").read_bytes() != b"old weights"
    assert _leftovers(home) == ["phantom-demo"]
