import math

import pytest
import torch
import torch.nn.functional as F

from simclr_embed.training.distributed import views_loss
from simclr_embed.training.loss import info_nce, key_nce


def slow_info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 1 of SimCLR written as a loop: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t),
    averaged over all 2N ordered positive pairs."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        sim = lambda a, b: float(z[a] @ z[b]) / tau  # noqa: E731
        denom = sum(math.exp(sim(i, k)) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim(i, j)) / denom)
    return torch.tensor(total / n2)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 0.5), (8, 16, 0.1), (5, 128, 0.07)])
def test_matches_slow_loop_from_the_paper(n: int, d: int, tau: float) -> None:
    z1, z2 = unit(n, d, seed=1), unit(n, d, seed=2)
    expected = slow_info_nce(z1, z2, tau).item()
    assert info_nce(z1, z2, tau).item() == pytest.approx(expected, rel=1e-5)


def test_identical_embeddings_give_log_of_2n_minus_1() -> None:
    n = 6
    z = F.normalize(torch.ones(n, 4), dim=1)
    assert info_nce(z, z.clone(), 0.1).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


def test_orthogonal_aligned_pairs_closed_form() -> None:
    n, tau = 4, 0.2
    z = torch.eye(8)[:n]  # each image its own axis, both views on it
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert info_nce(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-5)


def test_symmetric_in_views_and_invariant_to_batch_order() -> None:
    z1, z2 = unit(7, 32, seed=3), unit(7, 32, seed=4)
    loss = info_nce(z1, z2, 0.1)
    assert info_nce(z2, z1, 0.1).item() == pytest.approx(loss.item(), rel=1e-6)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert info_nce(z1[perm], z2[perm], 0.1).item() == pytest.approx(loss.item(), rel=1e-6)


def test_lower_when_views_agree_and_gradients_flow() -> None:
    z1 = unit(16, 32, seed=5).requires_grad_()
    aligned = info_nce(z1, z1.detach().clone(), 0.1)
    random = info_nce(z1, unit(16, 32, seed=6), 0.1)
    assert aligned < random
    random.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_global_batch_form_equals_single_process_when_split() -> None:
    """The rank-sliced form (queries local, keys global) averaged over ranks is the full loss."""
    z1, z2 = unit(8, 16, seed=7), unit(8, 16, seed=8)
    full = info_nce(z1, z2, 0.1)
    parts = [info_nce(z1[r * 4:(r + 1) * 4], z2[r * 4:(r + 1) * 4], 0.1, z1, z2, rank=r)
             for r in range(2)]
    assert torch.stack(parts).mean().item() == pytest.approx(full.item(), rel=1e-6)


def test_logits_stay_fp32_under_bf16_autocast() -> None:
    """Cosines near 1 lose digits in bf16; under autocast the loss must equal the fp32 loss."""
    base = unit(64, 128, seed=9)
    z1 = base
    z2 = F.normalize(base + 0.01 * unit(64, 128, seed=10), dim=1)  # near-duplicate views
    exact = info_nce(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = info_nce(z1, z2, 0.1)
    assert amp.dtype == torch.float32
    assert amp.item() == pytest.approx(exact.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the old code computed
        rounded = (torch.cat([z1, z2]) @ torch.cat([z1, z2]).T).float()
    assert (rounded - torch.cat([z1, z2]) @ torch.cat([z1, z2]).T).abs().max() > 1e-3


def slow_moco(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None,
              tau: float) -> torch.Tensor:
    """Eq. 1 of MoCo as a loop: L_q = -log exp(q.k+/t) / (exp(q.k+/t) + sum_k- exp(q.k-/t)),
    the positive the key of the query's own image, the negatives the batch's other keys and
    every key in the queue; averaged over the queries."""
    negatives = [*k, *(queue if queue is not None else [])]
    total = 0.0
    for i, qi in enumerate(q.double()):
        pos = math.exp(float(qi @ k[i].double()) / tau)
        neg = sum(math.exp(float(qi @ kj.double()) / tau)
                  for j, kj in enumerate(negatives) if j != i)
        total += -math.log(pos / (pos + neg))
    return torch.tensor(total / len(q))


@pytest.mark.parametrize(("n", "queue_len", "tau"), [(4, 0, 0.2), (6, 10, 0.1), (3, 32, 0.07)])
def test_key_nce_matches_slow_loop_from_the_moco_paper(n: int, queue_len: int,
                                                       tau: float) -> None:
    q, k = unit(n, 16, seed=1), unit(n, 16, seed=2)
    queue = unit(queue_len, 16, seed=3) if queue_len else None
    expected = slow_moco(q, k, queue, tau).item()
    assert key_nce(q, k, tau, queue=queue).item() == pytest.approx(expected, rel=1e-5)


def test_key_nce_finds_its_rows_in_the_global_batch() -> None:
    """Rank 1 of 2: its queries' positives are rows n..2n-1 of the gathered keys."""
    q, k_all = unit(8, 16, seed=1), unit(8, 16, seed=2)
    halves = [key_nce(q[r * 4:(r + 1) * 4], k_all, 0.1, rank=r) for r in (0, 1)]
    assert torch.stack(halves).mean().item() == pytest.approx(key_nce(q, k_all, 0.1).item(),
                                                              rel=1e-5)
    assert key_nce(q[4:], k_all, 0.1, rank=1).item() != pytest.approx(
        key_nce(q[4:], k_all, 0.1, rank=0).item())


def test_views_loss_is_plain_simclr_for_one_pair() -> None:
    z1, z2 = unit(8, 16, seed=1), unit(8, 16, seed=2)
    assert views_loss([z1, z2], [], 0.1).item() == pytest.approx(info_nce(z1, z2, 0.1).item())


def test_views_loss_adds_each_local_view_against_each_global_view() -> None:
    g1, g2, l1 = unit(8, 16, seed=1), unit(8, 16, seed=2), unit(8, 16, seed=3)
    terms = [info_nce(g1, g2, 0.1), key_nce(l1, g1, 0.1), key_nce(l1, g2, 0.1)]
    assert views_loss([g1, g2], [l1], 0.1).item() == pytest.approx(
        torch.stack(terms).mean().item())
    keys, queue = [unit(8, 16, seed=4), unit(8, 16, seed=5)], unit(5, 16, seed=6)
    with_keys = [key_nce(g1, keys[1], 0.1, queue=queue), key_nce(g2, keys[0], 0.1, queue=queue),
                 key_nce(l1, keys[0], 0.1, queue=queue), key_nce(l1, keys[1], 0.1, queue=queue)]
    assert views_loss([g1, g2], [l1], 0.1, keys, queue).item() == pytest.approx(
        torch.stack(with_keys).mean().item())
