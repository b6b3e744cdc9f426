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


def key_nce(
    q: Tensor,
    k_all: Tensor,
    temperature: float = 0.1,
    rank: int = 0,
    queue: Tensor | None = None,
) -> Tensor:
    """InfoNCE of queries against keys of another view: MoCo's loss (He et al., 2020, eq. 1),
    and multi-crop's local-to-global term (Caron et al., 2020).

    Query i's positive is key i of this rank's rows; its negatives are the batch's other keys and
    every row of the queue. The queue holds keys of earlier batches only: the current batch's
    keys join it after the step, so none is its own image's negative there.

    Args:
        q: (n, D) L2-normalized queries of this rank's n images (with gradient).
        k_all: (N, D) L2-normalized keys of the global batch, rank-major (N = n in one process):
            the momentum encoder's (no gradient), or the online encoder's global views.
        temperature: tau in sim(u, v) / tau.
        rank: this rank's index, which locates its rows in k_all.
        queue: (Q, D) L2-normalized keys of earlier batches, or None.

    Returns:
        () the loss averaged over the n queries.
    """
    keys = k_all if queue is None else torch.cat([k_all, queue.to(k_all.dtype)])  # (N + Q, D)
    with torch.autocast(q.device.type, enabled=False):  # fp32 cosines, as in info_nce
        logits = q.float() @ keys.float().T / temperature  # (n, N + Q)
        target = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]  # (n,)
        return F.cross_entropy(logits, target)
