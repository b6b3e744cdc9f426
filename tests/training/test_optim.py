"""LARS (training/optim.py), whose step runs in multi-tensor kernels, against a per-parameter
loop written from You et al. (2017) as SimCLR uses it: a weight matrix's step is its gradient
plus weight decay, scaled by eta * ||w|| / ||g + wd * w||; biases and norm parameters (1-d)
get neither; then momentum SGD."""

from __future__ import annotations

import torch

from simclr_embed.training.optim import LARS


def reference_step(params: list[torch.Tensor], grads: list[torch.Tensor],
                   bufs: list[torch.Tensor | None], lr: float, momentum: float, wd: float,
                   eta: float) -> None:
    for n, (p, g) in enumerate(zip(params, grads, strict=True)):
        if p.ndim > 1:
            g = g + wd * p
            w_norm, g_norm = p.norm().item(), g.norm().item()
            if w_norm > 0 and g_norm > 0:
                g = g * (eta * w_norm / g_norm)
        bufs[n] = g.clone() if bufs[n] is None else momentum * bufs[n] + g
        p -= lr * bufs[n]


def test_lars_matches_the_per_parameter_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (8,), (4, 3, 3, 3), (5, 5)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    start[3].zero_()  # a zero matrix: no trust ratio, the plain step
    ours = [t.clone().requires_grad_() for t in start]
    ref = [t.clone() for t in start]
    opt = LARS(ours, lr=0.3, momentum=0.9, weight_decay=1e-4, eta=0.02)
    bufs: list[torch.Tensor | None] = [None] * len(shapes)
    for _ in range(4):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for p, g in zip(ours, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        reference_step(ref, grads, bufs, 0.3, 0.9, 1e-4, 0.02)
    for p, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0].detach(), start[0])  # it moved
