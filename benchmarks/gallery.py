"""The gallery: search and writes on SQLite + FAISS and PostgreSQL + pgvector, growth through
the API with recall at each step, a million vectors, and duplicates and the map.

    python -m benchmarks.gallery search --quick       # smoke-tested
    python -m benchmarks.gallery growth --quick
    python -m benchmarks.gallery million
    python -m benchmarks.gallery duplicates --quick
"""

from simclr_embed.benchmarks.harness import measurements
from simclr_embed.benchmarks.parts import (
    gallery_duplicates,
    gallery_growth,
    gallery_million,
    gallery_search,
)

PARTS = {"search": gallery_search, "growth": gallery_growth, "million": gallery_million,
         "duplicates": gallery_duplicates}

if __name__ == "__main__":
    measurements(__doc__, PARTS)
