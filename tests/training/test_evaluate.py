"""The kNN monitor's vote (training/evaluate.py, knn_predict) against a slow loop written from
Wu et al. (2018): each of the k most cosine-similar bank items votes for its class with weight
exp(similarity / temperature); the class with the largest sum wins."""

from __future__ import annotations

import math

import pytest
import torch

from simclr_embed.training.evaluate import knn_accuracy, knn_predict


def slow_knn(query: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor, classes: int,
             k: int, temperature: float) -> list[int]:
    out = []
    for q in query.tolist():
        sims = []
        for b, y in zip(bank.tolist(), labels.tolist(), strict=True):
            dot = sum(x * z for x, z in zip(q, b, strict=True))
            norm = math.sqrt(sum(x * x for x in q)) * math.sqrt(sum(z * z for z in b))
            sims.append((dot / norm, y))
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * classes
        for sim, y in sims[:k]:
            scores[y] += math.exp(sim / temperature)
        out.append(max(range(classes), key=lambda c: scores[c]))
    return out


@pytest.mark.parametrize(("k", "temperature", "chunk"), [(1, 0.1, 1024), (7, 0.1, 5),
                                                          (20, 0.5, 3), (500, 0.07, 64)])
def test_knn_vote_matches_the_slow_loop(k: int, temperature: float, chunk: int) -> None:
    gen = torch.Generator().manual_seed(k)
    bank = torch.randn(60, 8, generator=gen) * 3  # unnormalised: knn_predict normalises
    labels = torch.randint(0, 4, (60,), generator=gen)
    query = torch.randn(25, 8, generator=gen)
    got = knn_predict(query, bank, labels, 4, k=k, temperature=temperature, chunk=chunk)
    assert got.tolist() == slow_knn(query, bank, labels, 4, min(k, 60), temperature)


def test_many_weak_votes_can_outweigh_the_nearest() -> None:
    """The weights, not a majority: one very close neighbour of class 1 against two far ones
    of class 0 wins at a low temperature and loses at a high one."""
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.2]])
    assert knn_predict(query, bank, labels, 2, k=3, temperature=0.05).tolist() == [1]
    assert knn_predict(query, bank, labels, 2, k=3, temperature=10.0).tolist() == [0]
    assert knn_accuracy(bank, labels, bank, labels, k=1) == 100.0
