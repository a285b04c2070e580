"""ZoeDepth's metric bins head (Bhat et al., "ZoeDepth: Zero-shot Transfer by Combining Relative and
Metric Depth"): per-pixel bin centres, refined by attractors at each decoder scale, and a conditional
log-binomial distribution over the bins. Every layer is a 1×1 conv; the `_net`/`mlp` names follow the
published weights."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _mlp(cin: int, hidden: int, cout: int, last: nn.Module | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, cout, 1)]
    return nn.Sequential(*layers, *([last] if last is not None else []))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class SeedBinRegressor(nn.Module):
    """Unbounded (softplus) bin centres from the bottleneck features."""

    def __init__(self, cin: int, n_bins: int, hidden: int = 256):
        super().__init__()
        self._net = _mlp(cin, hidden, n_bins, nn.Softplus())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)


class Projector(nn.Module):
    """Decoder features -> bin embedding."""

    def __init__(self, cin: int, cout: int, hidden: int = 128):
        super().__init__()
        self._net = _mlp(cin, hidden, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)


class Attractor(nn.Module):
    """Unbounded attractor points A (softplus) pull every bin centre c by the mean over attractors of the
    inverse attractor (A − c) / (1 + α·(A − c)^γ); centres stay unbounded and unsorted."""

    def __init__(self, embedding: int, n_attractors: int, alpha: float = 300.0, gamma: int = 2, hidden: int = 128):
        super().__init__()
        self.alpha = float(alpha)
        self.gamma = gamma
        self._net = _mlp(embedding, hidden, n_attractors, nn.Softplus())

    def forward(self, embedding: torch.Tensor, centres: torch.Tensor, previous_embedding: torch.Tensor) -> torch.Tensor:
        """embedding (N, E, h, w), centres and previous embedding at a coarser scale -> centres (N, bins, h, w)."""
        size = embedding.shape[-2:]
        attractors = self._net(embedding + _resize(previous_embedding, size))
        centres = _resize(centres, size)
        dx = attractors.unsqueeze(2) - centres.unsqueeze(1)  # (N, attractors, bins, h, w)
        return centres + torch.mean(dx.div(1 + self.alpha * dx.pow(self.gamma)), dim=1)


def log_binomial_coefficient(n: torch.Tensor, k: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """log C(n, k) by Stirling's n·ln n − k·ln k − (n−k)·ln(n−k), with eps added to n, k and n−k."""
    n, k = n + eps, k + eps
    return n * torch.log(n) - k * torch.log(k) - (n - k) * torch.log(n - k + eps)


class LogBinomial(nn.Module):
    """softmax over k of log[C(K−1, k) p^k (1−p)^(K−1−k)] / t: a unimodal distribution over K bins."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.register_buffer("k_idx", torch.arange(n_classes).view(1, -1, 1, 1))
        self.register_buffer("K_minus_1", torch.tensor([n_classes - 1.0]).view(1, -1, 1, 1))

    def forward(self, p: torch.Tensor, t: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """p (N, H, W) in (0, 1), t (N, 1, H, W) -> probabilities (N, K, H, W)."""
        p = p.unsqueeze(1)
        q = torch.clamp(1 - p, eps, 1)
        p = torch.clamp(p, eps, 1)
        k = self.k_idx
        logits = (log_binomial_coefficient(self.K_minus_1, k) + k * torch.log(p)
                  + (k.shape[1] - 1 - k) * torch.log(q))
        return torch.softmax(logits / t, dim=1)


class ConditionalLogBinomial(nn.Module):
    """p and the temperature t from features + bin embedding, each as a ratio of two softplus outputs."""

    def __init__(self, cin: int, condition: int, n_classes: int, min_temp: float, max_temp: float, eps: float = 1e-4):
        super().__init__()
        self.min_temp, self.max_temp, self.eps = min_temp, max_temp, eps
        self.log_binomial_transform = LogBinomial(n_classes)
        hidden = (cin + condition) // 2
        self.mlp = nn.Sequential(nn.Conv2d(cin + condition, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 4, 1), nn.Softplus())

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        pt = self.mlp(torch.cat([x, condition], dim=1))
        p, t = pt[:, :2] + self.eps, pt[:, 2:] + self.eps
        p = p[:, 0] / (p[:, 0] + p[:, 1])
        t = (t[:, 0] / (t[:, 0] + t[:, 1])).unsqueeze(1)
        return self.log_binomial_transform(p, (self.max_temp - self.min_temp) * t + self.min_temp)
