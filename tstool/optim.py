"""AdamW and its schedule: linear warmup, then cosine decay to min_lr over the true step count."""

from __future__ import annotations

import math

import torch

from tstool.config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def build_optimizer(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # The fused kernel is fastest where it exists (CUDA, and CPU in recent torch).
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
