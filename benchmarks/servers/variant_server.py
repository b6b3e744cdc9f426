"""The service with one of its request-path special cases (service/special_cases.py) taken
out, for benchmarks that measure what each buys (benchmarks.ab, benchmarks.archive.spinning) and for
the test that the hot path answers as the routes do. Settings from SIMCLR_EMBED_* as for
`simclr-embed serve`; one worker.

    python -m simclr_embed.benchmarks.servers.variant_server --no-hot-path --no-settle
"""

from __future__ import annotations

import argparse

import uvicorn

from simclr_embed.service.app import create_app
from simclr_embed.service.protocol import UVICORN_OPTIONS
from simclr_embed.service.runtime import SPINNING
from simclr_embed.service.settings import Settings
from simclr_embed.service.special_cases import CASES
from simclr_embed.service.startup import check_before_workers


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-hot-path", dest="hot_path", action="store_false",
                   help="POST /v1/embed and /v1/search through FastAPI's routes")
    p.add_argument("--no-settle", dest="settle", action="store_false",
                   help="leave the garbage collector as CPython starts it")
    p.add_argument("--no-lone-run", dest="lone_run", action="store_false",
                   help="a lone image or search waits for the model or search thread too")
    p.add_argument("--no-inline-decode", dest="inline", action="store_false",
                   help="thumbnails decode in the pool like larger images")
    p.add_argument("--spinning", choices=SPINNING, default="run",
                   help="how ONNX Runtime's idle threads wait")
    args = p.parse_args(argv)
    CASES.hot_path, CASES.settle_heap, CASES.lone_run = args.hot_path, args.settle, args.lone_run
    CASES.spinning = args.spinning
    if not args.inline:
        CASES.inline_decode_pixels = 0
    settings = Settings()
    check_before_workers(settings)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
