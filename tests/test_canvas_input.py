"""Pictures that arrive as data URLs (the Draw page's canvas): checked for bytes and pixels before anything
is decoded, refused with the upload's sentences, remembered by content so a repeated message is cheap."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_pages import assert_ok, open_page, stored_run, texts

from mtl_core import predict
from mtl_core.predict import ImageInputError, read_data_url, read_image_bytes

ROOT = Path(__file__).resolve().parent.parent
RSS_GROWTH_LIMIT_MB = 200


def flat_png(width: int, height: int) -> bytes:
    """A real PNG of one colour, any size, made without holding its pixels: 1-bit grey rows streamed into
    zlib (a 14000x14000 one is 24 kB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def stroke_url(size: int = 280) -> str:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    ImageDraw.Draw(img).line([(size // 2, size // 6), (size // 2, size * 5 // 6)], fill=(255,) * 4, width=size // 15)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return data_url(buf.getvalue())


@pytest.fixture(scope="module")
def bombs() -> dict[int, str]:
    return {side: data_url(flat_png(side, side)) for side in (9000, 14000)}


@pytest.fixture(autouse=True)
def _empty_cache():
    predict._DATA_URL_CACHE.clear()
    yield
    predict._DATA_URL_CACHE.clear()


def test_a_canvas_drawing_is_read_as_rgba():
    image = read_data_url(stroke_url())
    assert image.shape == (280, 280, 4) and image.dtype == np.uint8
    assert image[:, 140, 0].max() == 255 and image[:, 10, 0].max() == 0
    assert not image.flags.writeable  # shared between sessions by the cache


@pytest.mark.parametrize("side", [9000, 14000])
def test_a_huge_png_is_refused_by_its_header(bombs, side):
    # PIL itself refuses to open one over twice its own limit (179 M pixels): the sentence says so.
    with pytest.raises(ImageInputError, match=f"the picture is ({side}x{side}|far larger than [0-9,]+) pixels"):
        read_data_url(bombs[side])


@pytest.mark.parametrize("side", [9000, 14000])
def test_refusing_a_huge_png_keeps_the_server_small(bombs, side, tmp_path):
    """Peak RSS growth of a fresh process around read_data_url (PIL's pixel memory is outside tracemalloc)."""
    url_file = tmp_path / "url.txt"
    url_file.write_text(bombs[side])
    code = (
        "import resource, sys\n"
        "from mtl_core.predict import ImageInputError, read_data_url\n"
        "url = open(sys.argv[1]).read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    read_data_url(url)\nexcept ImageInputError as exc:\n    print('refused:', exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(url_file)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    refused, growth = out.stdout.strip().splitlines()
    assert refused.startswith("refused: the picture is")
    assert float(growth) < RSS_GROWTH_LIMIT_MB, f"grew by {growth} MB"


def test_the_pixel_count_is_checked_from_the_header_on_every_path(bombs):
    """Uploads and data URLs alike: more pixels than MAX_IMAGE_PIXELS in all is refused before decoding."""
    with pytest.raises(ImageInputError, match="the picture is 5000x5000 pixels; at most 16,777,216 pixels in all"):
        read_image_bytes(flat_png(5000, 5000))
    with pytest.raises(ImageInputError, match="the picture is 9000x9000 pixels; at most 16,777,216 pixels in all"):
        read_data_url(bombs[9000], max_side=10_000)


def test_a_canvas_picture_larger_than_a_canvas_is_refused():
    with pytest.raises(ImageInputError, match="the picture is 2400x2400 pixels; at most 2000x2000"):
        read_data_url(data_url(flat_png(2400, 2400)))
    assert read_data_url(data_url(flat_png(560, 560))).shape == (560, 560, 4)  # a high-density screen's canvas


def test_a_multi_megabyte_payload_is_refused_before_base64_is_decoded(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("base64 was decoded")

    monkeypatch.setattr(predict.base64, "b64decode", no_decoding)
    url = "data:image/png;base64," + "A" * (8 * 2**20)
    t0 = time.perf_counter()
    with pytest.raises(ImageInputError, match="the file is 6.3 MB; the limit is 2 MB"):
        read_data_url(url)
    assert time.perf_counter() - t0 < 0.05
    assert not predict._DATA_URL_CACHE  # a refusal by length is not even hashed


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "did not arrive as a picture"),
        ({"data": "x"}, "did not arrive as a picture"),
        ("javascript:alert(1)", "did not arrive as a picture"),
        ("data:text/html;base64,PGgxPg==", "did not arrive as a picture"),
        ("data:image/png;base64,not base64!", "damaged or cut short"),
        ("data:image/png;base64,", "the file is empty"),
        ("data:image/png;base64," + base64.b64encode(b"#!/bin/sh\n").decode(), "not a picture"),
        ("data:image/png;base64,ümlaut", "damaged or cut short"),
    ],
)
def test_anything_else_a_component_sends_gets_a_sentence(value, reason):
    with pytest.raises(ImageInputError, match=reason):
        read_data_url(value)


def test_the_same_message_twice_is_decoded_once(monkeypatch):
    calls = []
    real = predict.read_image_bytes
    monkeypatch.setattr(predict, "read_image_bytes", lambda *a, **k: calls.append(1) or real(*a, **k))
    url = stroke_url()
    first = read_data_url(url)
    for _ in range(50):
        assert read_data_url(url) is first
    bad = data_url(flat_png(9000, 9000))
    for _ in range(50):
        with pytest.raises(ImageInputError):
            read_data_url(bad)
    assert len(calls) == 2  # one decode for the drawing, one header read for the bomb


def test_the_cache_stays_within_its_budget(monkeypatch):
    monkeypatch.setattr(predict, "_DATA_URL_CACHE_LIMITS", (256, 1_000_000))  # three 280x280 RGBA pictures
    urls = [stroke_url(280 + i) for i in range(6)]
    for url in urls:
        read_data_url(url)
    assert len(predict._DATA_URL_CACHE) == 3
    assert sum(v.nbytes for v in predict._DATA_URL_CACHE.values()) <= 1_000_000


# ----------------------------------------------------------------------------- the Draw page


def inject(at, url) -> None:
    at.session_state["canvas"] = {"drawing": {"raw": {"objects": [{}]}, "data": url}, "backgroundFit": None}
    at.run()


def test_the_draw_page_refuses_huge_canvas_pictures_with_a_sentence(synthetic, bombs):
    stored_run("hard", synthetic)
    at = open_page("pages/draw.py")
    assert_ok(at)
    for side in (9000, 14000):
        inject(at, bombs[side])
        assert_ok(at)
        assert "That drawing cannot be used: the picture is" in texts(at.error)
        assert "pixels" in texts(at.error)
        assert not at.get("progress")  # no prediction from a refused picture
    inject(at, "data:image/png;base64," + "A" * (3 * 2**20))
    assert_ok(at)
    assert "the limit is 2 MB" in texts(at.error)
    inject(at, json.dumps({"not": "a picture"}))
    assert_ok(at)
    assert "did not arrive as a picture" in texts(at.error)
    inject(at, stroke_url())  # and a real drawing afterwards still works
    assert_ok(at)
    assert not at.error
    assert at.get("progress")
