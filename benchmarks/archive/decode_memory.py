"""Peak memory of decoding the worst images the limits let through (25 M pixels, aspect <= 64),
each in a fresh process so that one's peak does not hide another's: the extra RSS over a
process that only imported the decoder and read the file.

    python -m benchmarks.decode_memory
"""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from simclr_embed.benchmarks.harness import hardware, write_result

log = logging.getLogger("decode_memory")

# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork + exec.
PROBE = """
import sys
from simclr_embed.service.preprocess import decode_image
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])
raw = open(sys.argv[1], "rb").read()
before = hwm()
status = "ok"
try:
    decode_image(raw, 32, 25_000_000, 64, int(sys.argv[2]))
except Exception as e:
    status = type(e).__name__
print(before, hwm(), status)
"""


def worst_images() -> dict[str, bytes]:
    """Images at the limits, in the formats whose decoders hold the most per pixel."""
    rng = np.random.default_rng(0)
    out = {}

    def save(name: str, img: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    tile = rng.integers(0, 256, (625, 625, 4), np.uint8)
    rgba = Image.fromarray(np.tile(tile, (8, 8, 1)), "RGBA")  # 5000 x 5000
    save("png_rgba_5000x5000", rgba, "PNG", compress_level=1)
    grey16 = Image.fromarray(np.tile(rng.integers(0, 65536, (625, 625), np.uint16), (8, 8)))
    save("png_grey16_5000x5000", grey16, "PNG", compress_level=1)
    save("png_strip_40000x625", Image.fromarray(np.tile(tile[:, :, :3], (1, 64, 1))), "PNG",
         compress_level=1)
    save("jpeg_rgb_5000x5000", rgba.convert("RGB"), "JPEG", quality=90)
    save("jpeg_progressive_5000x5000", rgba.convert("RGB"), "JPEG", quality=90,
         progressive=True)
    save("webp_rgb_5000x5000", rgba.convert("RGB"), "WEBP", quality=80, method=0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_memory.json"))
    p.add_argument("--max-decode-mb", type=int, default=256, help="the service's default")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw in worst_images().items():
            path = Path(tmp) / name
            path.write_bytes(raw)
            res = subprocess.run([sys.executable, "-c", PROBE, str(path), str(args.max_decode_mb)],
                                 capture_output=True, text=True, check=True)
            before, after, status = res.stdout.split()
            rows.append({"image": name, "file_bytes": len(raw), "status": status,
                         "extra_peak_rss_mb": (int(after) - int(before)) / 1024})
            log.info("%s", rows[-1])
    write_result(args.out, {"benchmark": "decode_memory", "hardware": hardware(),
                            "limits": {"max_image_pixels": 25_000_000, "max_image_aspect": 64,
                                       "max_decode_mb": args.max_decode_mb},
                            "rows": rows})


if __name__ == "__main__":
    main()
