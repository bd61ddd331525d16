"""QC drawing: the participant PNG (pixels only, colours of the matplotlib maps) and qc.html."""

from __future__ import annotations

import base64
import io
import re
import zlib
from pathlib import Path

import numpy as np

from myocomp.imaging.dixon import dixon_from_arrays
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.pipeline import qc_page
from myocomp.synth.phantom import make_phantom

SMALL = {"n_slices": 8, "voxel_size_mm": (4.0, 4.0, 6.0), "supersample": 1}


def volumes(p):
    dixon = dixon_from_arrays(p.water, p.fat, p.affine)
    return dixon, labelmap_from_array(p.labels, p.affine, "mrsegmentator", reference=dixon)


def test_colour_tables_equal_the_matplotlib_colormaps() -> None:
    from matplotlib import colormaps

    x = np.linspace(0.0, 1.0, 1001)
    for name in ("gray", "magma"):
        expected = (colormaps[name](x)[:, :3] * 255).astype(np.uint8)
        got = qc_page.colour_table(name)[np.minimum((x * 256).astype(int), 255)]
        assert np.array_equal(got, expected), name


def test_png_has_the_panels_and_muscle_outlines(tmp_path: Path) -> None:
    from PIL import Image

    dixon, lm = volumes(make_phantom(0, **SMALL))
    img = np.asarray(Image.open(io.BytesIO(qc_page.render_png(dixon, lm))))
    nx = dixon.shape[0]  # one pixel per voxel of the finest axis, two panels + a 4 px gap
    assert img.ndim == 3 and img.shape[1] == 2 * nx + 4
    assert (img == (0, 255, 255)).all(axis=-1).sum() > 50  # cyan outlines drawn
    big = np.asarray(Image.open(io.BytesIO(qc_page.render_png(dixon, lm, width=160))))
    scale = round(160 / nx)
    assert big.shape[1] == scale * (2 * nx + 4) and big.shape[0] >= scale * (img.shape[0] - 8)
    top = dixon.shape[2]  # rows of the coronal pair: the same pixels, each repeated
    assert np.array_equal(big[: scale * top : scale, ::scale], img[:top])


def png_text_chunks(data: bytes) -> list[bytes]:
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind in (b"tEXt", b"iTXt"):
            chunks.append(body)
        if kind == b"zTXt":
            chunks.append(zlib.decompress(body.split(b"\0", 1)[1][1:]))
        pos += 12 + length
    return chunks


def test_png_and_html(tmp_path: Path) -> None:
    p = make_phantom(0, **SMALL)
    dixon, lm = volumes(p)
    data = qc_page.render_png(dixon, lm, tmp_path / "a.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "a.png").read_bytes() == data
    assert not any(b"Software" in c for c in png_text_chunks(data))
    entries = [
        {
            "participant_id": "A_ok",
            "flags": {"qc_geometry": False},
            "notes": "",
            "png": tmp_path / "a.png",
        },
        {
            "participant_id": "Z_bad",
            "flags": {"qc_geometry": True},
            "notes": "identity <affine>",
            "png": tmp_path / "a.png",
        },
    ]
    page = qc_page.write_qc_html(
        tmp_path / "qc.html",
        entries,
        failed=[{"participant_id": "F1", "stage": "load", "reason": "truncated"}],
    )
    text = page.read_text()
    assert text.index("Z_bad") < text.index("A_ok")  # flagged first
    assert text.index("F1") < text.index("Z_bad")
    assert "identity &lt;affine&gt;" in text
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) == 2 and base64.b64decode(images[0]) == data
    assert "src='http" not in text and 'src="http' not in text  # self-contained
