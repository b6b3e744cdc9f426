"""Hostile and unusual images over real HTTP, each built here from real CIFAR-10 pixels: rotated
phone photos and 16-bit scans must give the upright 8-bit embedding; truncated headers in every
format Pillow writes a 400; headers claiming too many pixels or too thin a strip a 413 before
any pixel is decoded. After each, the server keeps answering correctly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from simclr_embed.service.preprocess import decode_image, to_square_rgb
from tests.support.servers import png

# Formats Pillow can both write and read; each gets its truncation test.
Image.init()  # registers every plugin, so SAVE and OPEN list them all
FORMATS = ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "TGA", "PCX", "SGI", "ICO", "IM",
           "DDS", "QOI"]
FORMATS = [f for f in FORMATS if f in Image.SAVE and f in Image.OPEN]


@pytest.fixture(scope="module")
def photo(cifar10) -> np.ndarray:
    """A real CIFAR-10 test image upscaled to 96 x 64: not square, so a rotation shows."""
    img = Image.fromarray(cifar10[1].images[7]).resize((96, 64), Image.BICUBIC)
    return np.asarray(img)


def embed(client, raw: bytes) -> np.ndarray:
    r = client.post("/v1/embed", content=raw, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"][0])


def encode(arr_or_img, fmt: str, **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_rotated(upright: np.ndarray, fmt: str) -> bytes:
    """The pixels a camera stores for an upright scene when held sideways (EXIF Orientation 6:
    rotate 90 degrees clockwise to display)."""
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # (W, H): counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(client, photo, fmt) -> None:
    kw = {"quality": 95} if fmt == "JPEG" else {}
    upright = embed(client, encode(photo, fmt, **kw))
    rotated = embed(client, exif_rotated(photo, fmt))
    sideways = embed(client, encode(np.rot90(photo, k=1).copy(), fmt, **kw))  # no EXIF tag
    assert upright @ rotated > 0.995  # the same picture once upright
    assert upright @ sideways < upright @ rotated - 0.01  # what the bug embedded instead


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16", "TIFF"), ("I", "TIFF")])
def test_sixteen_bit_greyscale_equals_its_eight_bit_version(client, photo, mode, fmt) -> None:
    grey = np.asarray(Image.fromarray(photo).convert("L"))  # (64, 96) uint8
    wide = Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range, I;16
    if mode == "I":
        wide = wide.convert("I")
    raw = encode(wide, fmt)
    reference = embed(client, png(np.stack([grey] * 3, -1)))
    assert embed(client, raw) @ reference > 0.9999
    white = embed(client, png(np.full((64, 96, 3), 255, np.uint8)))
    assert embed(client, raw) @ white < 0.99  # the old decoder's clipped-to-white answer


def test_training_decodes_like_the_service(photo) -> None:
    """One function for both: the EXIF-rotated file decodes to the upright pixels' array."""
    upright = to_square_rgb(Image.open(io.BytesIO(encode(photo, "PNG"))), 32).astype(int)
    rotated = to_square_rgb(Image.open(io.BytesIO(exif_rotated(photo, "PNG"))), 32).astype(int)
    sideways = np.rot90(upright, k=1)
    assert np.abs(upright - rotated).max() <= 2  # resampling rounds in another order
    assert np.abs(upright - sideways).mean() > 10 * np.abs(upright - rotated).mean()


@pytest.mark.parametrize("side", [32, 64])
def test_transparency_is_composited_on_black_at_any_size(side: int) -> None:
    """Red stored under fully transparent pixels comes out black whether or not the image is
    resampled; half-transparent red comes out half red."""
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[: side // 2, :, 3] = 255
    rgba[side // 2 :, : side // 2, 3] = 128
    out = to_square_rgb(Image.fromarray(rgba, "RGBA"), 32).astype(int)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[-1, -1].tolist() == [0, 0, 0]
    assert abs(out[-1, 0, 0] - 128) <= 2 and out[-1, 0, 1:].tolist() == [0, 0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_are_400_in_every_format(client, photo, fmt) -> None:
    img = Image.fromarray(photo).resize((48, 32))
    raw = encode(img.convert("RGBA") if fmt in ("ICO", "QOI") else img, fmt)
    assert embed(client, raw).shape == (512,)  # the whole file decodes
    for cut in (4, 12, 26, len(raw) // 2, len(raw) - 8):
        r = client.post("/v1/embed", content=raw[:cut], headers={"content-type": "image/png"})
        if r.status_code == 200:  # some decoders accept a tail-less file; never a 500
            assert cut >= len(raw) // 2, f"{fmt} header cut at {cut} decoded"
            continue
        assert r.status_code == 400, (fmt, cut, r.text)
        body = r.json()["error"]
        assert body["code"] == "bad_image" and "cannot decode" in body["message"]


def png_claiming(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR (CRC fixed up) claims width x height pixels."""
    raw = bytearray(encode(np.zeros((8, 8), np.uint8), "PNG"))
    ihdr = raw[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


def jpeg_claiming(width: int, height: int) -> bytes:
    raw = bytearray(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = raw.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    raw[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


@pytest.mark.parametrize("claim", [(20000, 20000), (65000, 65000), (6000, 6000)])
@pytest.mark.parametrize("build", [png_claiming, jpeg_claiming], ids=["png", "jpeg"])
def test_headers_over_the_pixel_limit_are_413(client, build, claim) -> None:
    raw = build(*claim)
    assert len(raw) < 2000 and Image.open(io.BytesIO(raw)).size == claim
    r = client.post("/v1/embed", content=raw, headers={"content-type": "image/png"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert f"{claim[0]}x{claim[1]}" in r.json()["error"]["message"]


def test_thin_strips_are_413_and_wide_photos_still_work(client, photo) -> None:
    strip = encode(np.zeros((1, 200_000), np.uint8), "PNG")
    assert len(strip) < 2000  # 855 bytes in the report
    r = client.post("/v1/embed", content=strip, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "aspect ratio" in r.json()["error"]["message"]
    panorama = np.asarray(Image.fromarray(photo).resize((1280, 40)))  # 32:1 passes
    assert embed(client, png(panorama)).shape == (512,)


def test_large_jpeg_decodes_at_reduced_scale_like_full_decode(photo) -> None:
    """Draft mode (DCT scaling) keeps a 4000 x 3000 JPEG's decode small, and the result stays
    close to the full-resolution decode."""
    big = encode(np.asarray(Image.fromarray(photo).resize((4000, 3000))), "JPEG", quality=90)
    fast = decode_image(big, 32, 25_000_000)
    full = to_square_rgb(Image.open(io.BytesIO(big)).convert("RGB"), 32)  # no draft: RGB copy
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4


def test_ragged_query_vectors_are_422(client) -> None:
    r = client.post("/v1/search", json={"embeddings": [[1.0, 2.0], [1.0]], "k": 3})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    r = client.post("/v1/search", json={"embeddings": [[0.1] * 512, [0.1] * 511], "k": 3})
    assert r.status_code == 422 and "512 numbers" in r.json()["error"]["message"]


def test_formats_that_decode_expensively_have_a_memory_budget(client) -> None:
    """A 4200 x 4200 WebP passes the pixel limit, but its decoder would take ~270 MB."""
    raw = encode(Image.new("RGB", (4200, 4200), (40, 90, 160)), "WEBP", quality=50, method=0)
    r = client.post("/v1/embed", content=raw, headers={"content-type": "image/webp"})
    assert r.status_code == 413 and "MB" in r.json()["error"]["message"]
    small = encode(Image.new("RGB", (3000, 3000), (40, 90, 160)), "WEBP", quality=50, method=0)
    ok = client.post("/v1/embed", content=small, headers={"content-type": "image/webp"})
    assert ok.status_code == 200
