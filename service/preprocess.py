"""Image bytes -> the model's input, (S, S, 3) uint8 RGB. The same function serves training's
decoder (training/data.py) and the service, so a picture is framed alike in both; normalization
lives inside the ONNX graph.

What a camera or a scanner hands over is made upright and 8-bit first: EXIF orientation is
applied, 16- and 32-bit greyscale is rescaled (Pillow's convert("RGB") would clip it to white).
Transparency is composited onto black at any size (resampling premultiplies alpha, so it did
so already for images not at the model's size).
The work per image is bounded before any pixel is decoded: pixel count and aspect ratio are read
from the header, JPEGs decode at a reduced DCT scale, and only the centre square is resampled.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from simclr_embed.service.errors import BadImage, PayloadTooLarge

# Pillow's own bomb check (2x its MAX_IMAGE_PIXELS) would fire inside Image.open with an error of
# its own; ours runs on the header instead, with the service's limit, and answers 413.
Image.MAX_IMAGE_PIXELS = None

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Peak bytes per pixel that decoding costs, by format (benchmarks/archive/decode_memory.py measured
# 8 for RGBA PNG, 4 for RGB PNG, 3 for progressive JPEG, ~0 for baseline JPEG in draft mode,
# 16 for WebP); formats not listed are taken at 8.
_DECODE_BYTES_PER_PIXEL = {"JPEG": 3, "PNG": 8, "WEBP": 16, "GIF": 5, "BMP": 8, "TIFF": 8}


def to_eight_bit(img: Image.Image) -> Image.Image:
    """16-bit (I;16*) greyscale -> 8-bit L over the full 0..65535 range; 32-bit integer (I, how
    Pillow opens some 16-bit PNGs) likewise unless its values fit 0..255; float (F) images are
    taken as 0..1 when they fit it, else as 0..255."""
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        arr = np.asarray(img)  # (H, W) uint16 or int32
        top = 255 if img.mode == "I" and arr.max(initial=0) <= 255 else 65535
        out = np.empty(arr.shape, np.uint8)
        for r in range(0, arr.shape[0], 256):  # in bands: a float copy of 25 M pixels is 200 MB
            band = arr[r : r + 256].astype(np.float32)
            out[r : r + 256] = np.clip(band * (255 / top) + 0.5, 0, 255)
        return Image.fromarray(out, "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255 if arr.max(initial=0) <= 1 else 1
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L")
    return img


# EXIF Orientation -> the transposition that makes the picture upright (as ImageOps does).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_RESAMPLABLE = ("RGB", "RGBA", "L", "LA")  # modes Pillow resizes bicubically as they are


def to_square_rgb(img: Image.Image, size: int) -> np.ndarray:
    """Upright, 8-bit, RGB; the centre square of the shorter side resampled to size x size:
    (size, size, 3) uint8. Only that square is resampled and no full-size copy is made: the
    centre square is the same region whichever way the picture is turned, so the EXIF turn is
    applied to the small result, and the RGB conversion too."""
    if img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
        img.draft(img.mode, (size, size))  # DCT scaling: decode at >= size, never below
    turn = _UPRIGHT.get(img.getexif().get(0x0112, 1))
    img = to_eight_bit(img)
    if img.mode not in _RESAMPLABLE:
        img = img.convert("RGB")  # palette, CMYK, 1-bit, ...: no bicubic resampling as they are
    w, h = img.size
    side = min(w, h)
    if (w, h) != (size, size):
        left, top = (w - side) // 2, (h - side) // 2
        img = img.resize((size, size), Image.Resampling.BICUBIC,
                         box=(left, top, left + side, top + side))
    if turn is not None:
        img = img.transpose(turn)
    if img.mode in ("RGBA", "LA"):  # onto black, as the resampling (premultiplied) already does
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA"))
    return np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)


def open_checked(raw: bytes, max_pixels: int, max_aspect: float,
                 max_decode_mb: int = 256) -> Image.Image:
    """Image.open (header only) with our limits: 400 for what no decoder reads, 413 for a
    header that claims too many pixels or too thin a strip."""
    if not raw:
        raise BadImage("empty image")
    try:
        img = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError as e:  # its text names a BytesIO's memory address
        raise BadImage(f"cannot decode image: {len(raw)} bytes in no format Pillow reads "
                       "(PNG, JPEG, WebP, ...)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated headers
        raise BadImage(f"cannot decode image: {e}") from e
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImage(f"cannot decode image: {img.format} header claims {w}x{h} pixels")
    if w * h > max_pixels:
        raise PayloadTooLarge(f"image is {w}x{h} = {w * h} pixels, over the {max_pixels} limit")
    cost = w * h * _DECODE_BYTES_PER_PIXEL.get(img.format or "", 8)
    if cost > max_decode_mb * 2**20:
        raise PayloadTooLarge(f"decoding this {img.format} of {w}x{h} would take about "
                              f"{cost / 2**20:.0f} MB, over the {max_decode_mb} MB limit")
    if max(w, h) / min(w, h) > max_aspect:
        raise PayloadTooLarge(f"image is {w}x{h}: aspect ratio {max(w, h) / min(w, h):.0f}, "
                              f"over the {max_aspect:g} limit")
    return img


def decode_image(raw: bytes, size: int, max_pixels: int, max_aspect: float = 64,
                 max_decode_mb: int = 256) -> np.ndarray:
    """Decode one image of any common format; 400 for junk, 413 for a decompression bomb."""
    return finish_decode(open_checked(raw, max_pixels, max_aspect, max_decode_mb), size)


def finish_decode(img: Image.Image, size: int) -> np.ndarray:
    """The pixel work for an image open_checked has let through: (size, size, 3) uint8."""
    fmt = img.format or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return to_square_rgb(img, size)
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, ZeroDivisionError,
            IndexError, struct.error) as e:  # what Pillow's decoders raise on corrupt data
        raise BadImage(f"cannot decode {fmt}: {type(e).__name__}: {e}") from e


def decode_base64(data: str) -> bytes:
    """Plain base64 or a data URL (data:image/png;base64,...)."""
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if ";base64" not in header:
            raise BadImage("data URL must be base64-encoded (data:<type>;base64,<data>)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage(f"invalid base64 image: {e}") from e
