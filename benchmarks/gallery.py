"""The gallery: search and writes on SQLite + FAISS and PostgreSQL + pgvector, growth through
the API with recall at each step, and a million vectors.

    python -m benchmarks.gallery search --quick       # smoke-tested
    python -m benchmarks.gallery growth --quick
    python -m benchmarks.gallery million
"""

from simclr_embed.benchmarks.harness import measurements
from simclr_embed.benchmarks.parts import gallery_growth, gallery_million, gallery_search

PARTS = {"search": gallery_search, "growth": gallery_growth, "million": gallery_million}

if __name__ == "__main__":
    measurements(__doc__, PARTS)
