"""Training: steps per second by precision and memory format, and where a step's time goes
(torch.profiler).

    python -m benchmarks.train throughput --quick     # smoke-tested
    python -m benchmarks.train profile --quick        # smoke-tested
"""

from simclr_embed.benchmarks.harness import measurements
from simclr_embed.benchmarks.parts import step_profile, train_throughput

PARTS = {"throughput": train_throughput, "profile": step_profile}

if __name__ == "__main__":
    measurements(__doc__, PARTS)
