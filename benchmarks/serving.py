"""Serving: the engines against HTTP (our server, two workers, the naive FastAPI baseline),
compact vectors, several models and swaps under load, and the picture of a traced batch.

    python -m benchmarks.serving http --quick          # about a minute; smoke-tested
    python -m benchmarks.serving compact --quick
    python -m benchmarks.serving swap --bundles A B --quick
    python -m benchmarks.serving trace
"""

from simclr_embed.benchmarks.harness import measurements
from simclr_embed.benchmarks.parts import (
    compact_vectors,
    model_swap,
    serving_http,
    trace_picture,
)

PARTS = {"http": serving_http, "compact": compact_vectors, "swap": model_swap,
         "trace": trace_picture}

if __name__ == "__main__":
    measurements(__doc__, PARTS)
