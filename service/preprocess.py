"""Image bytes -> the model's input, (S, S, 3) uint8 RGB. The same resize serves training's
decoder (training/data.py) and the service, so a picture is framed alike in both; normalization
lives inside the ONNX graph."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import BadImage, PayloadTooLarge


def to_square_rgb(img: Image.Image, size: int) -> np.ndarray:
    """RGB, shorter side resized to `size`, centre-cropped to size x size: (size, size, 3) uint8."""
    img = img.convert("RGB")
    if img.size != (size, size):
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def decode_image(raw: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Decode one image of any common format; 400 for junk, 413 for a decompression bomb."""
    if not raw:
        raise BadImage("empty image")
    try:
        img = Image.open(io.BytesIO(raw))  # reads the header only
    except UnidentifiedImageError as e:
        raise BadImage("cannot decode image: not a recognised image format") from e
    w, h = img.size
    if w * h > max_pixels:
        raise PayloadTooLarge(f"image is {w}x{h} = {w * h} pixels, over the {max_pixels} limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return to_square_rgb(img, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"cannot decode image: {e}") from e


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
