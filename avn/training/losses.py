"""Losses not in torch: the focal loss of the staging model (SPEC §2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FocalLoss(nn.Module):
    """FL = −α_t (1 − p_t)^γ log p_t, averaged over the batch.

    α is per class (a tensor of C weights, e.g. inverse class frequency) so rare stages weigh more;
    γ down-weights the easy examples that dominate once the model is fairly good.
    """

    def __init__(self, alpha: torch.Tensor | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha if alpha is not None else torch.empty(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        p = log_p.exp()
        alpha = self.alpha[target] if self.alpha.numel() else torch.ones_like(p)
        return (-alpha * (1.0 - p) ** self.gamma * log_p).mean()


def inverse_frequency_alpha(labels: list[int] | torch.Tensor, classes: int) -> torch.Tensor:
    """Per-class α ∝ 1 / frequency, normalised to mean 1 (classes absent from ``labels`` get 1)."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=classes).float()
    alpha = torch.where(counts > 0, counts.sum() / (classes * counts.clamp(min=1)), torch.ones_like(counts))
    return alpha / alpha.mean()
