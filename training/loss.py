"""InfoNCE / NT-Xent, the SimCLR loss (Chen et al., 2020, eq. 1).

For 2N views of N images, each view's positive is the other view of its image; the other 2N - 2
views are its negatives. Under data parallelism each rank scores its own views (the queries)
against the views of every rank (the keys), so the negatives are the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.1,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
    rank: int = 0,
) -> Tensor:
    """Mean InfoNCE over this rank's 2n views.

    Args:
        z1, z2: (n, D) L2-normalized projections of the two views of this rank's n images.
        temperature: tau in sim(u, v) / tau.
        z1_all, z2_all: (N, D) the same for the global batch (all ranks, rank-major order);
            None means single process (N = n).
        rank: this rank's index, which locates its rows inside the global batch.

    Returns:
        () the loss averaged over this rank's 2n queries. Averaged over ranks with equal n it
        equals the single-process loss on the global batch.
    """
    if z1_all is None or z2_all is None:
        z1_all, z2_all = z1, z2
    n, big_n = z1.shape[0], z1_all.shape[0]
    queries = torch.cat([z1, z2]).float()  # (2n, D)
    keys = torch.cat([z1_all, z2_all]).float()  # (2N, D)
    # Under autocast a bf16 matmul would round cosines near 1 to ~3 significant digits, which
    # at tau = 0.1 moves logits by ~0.05: the similarities are computed in fp32.
    with torch.autocast(queries.device.type, enabled=False):
        logits = queries @ keys.T / temperature  # (2n, 2N)
    rows = torch.arange(n, device=z1.device) + rank * n  # (n,) global index of each image
    self_idx = torch.cat([rows, rows + big_n])  # (2n,) a view is never its own negative
    positive_idx = torch.cat([rows + big_n, rows])  # (2n,) the other view of the same image
    is_self = F.one_hot(self_idx, 2 * big_n).bool()  # (2n, 2N)
    logits = logits.masked_fill(is_self, float("-inf"))  # (2n, 2N)
    with torch.autocast(queries.device.type, enabled=False):
        return F.cross_entropy(logits, positive_idx)
