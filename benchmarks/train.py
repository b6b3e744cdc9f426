"""Training: steps per second by precision and memory format, where a step's time goes
(torch.profiler), and the momentum encoder and multi-crop against plain SimCLR at one budget.

    python -m benchmarks.train throughput --quick     # smoke-tested
    python -m benchmarks.train profile --quick        # smoke-tested
    python -m benchmarks.train tricks --quick         # smoke-tested
"""

from simclr_embed.benchmarks.harness import measurements
from simclr_embed.benchmarks.parts import step_profile, train_throughput, train_tricks

PARTS = {"throughput": train_throughput, "profile": step_profile, "tricks": train_tricks}

if __name__ == "__main__":
    measurements(__doc__, PARTS)
