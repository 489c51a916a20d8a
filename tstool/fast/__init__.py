"""Device-specific fast paths of the training step, behind one seam (`head_loss`) and one switch
(`train.fast_paths`).

A fast path gives the reference's numbers up to float rounding (its tests compare them with
`tstool.training.loss.weighted_cross_entropy`) and stays only while `python -m bench` shows it makes
a whole training step at least 5% faster at a preset's default settings on the device it targets
(docs/performance.md). There is one:

- CUDA: the output head and the loss replayed from a CUDA graph (`cuda_graph_loss`). A small model's
  step on a GPU is bound by kernel launches, and the graph turns the loss's dozens into one.
"""

from __future__ import annotations

import torch

from tstool.training.loss import HeadLoss, LossTables


def head_loss(tables: LossTables, device: torch.device, enabled: bool = True) -> HeadLoss:
    """The loss the training step calls: the device's fast path where there is one and `enabled`,
    otherwise the reference."""
    if enabled and device.type == "cuda":
        from tstool.fast.cuda_graph_loss import CudaGraphHeadLoss

        return CudaGraphHeadLoss(tables)
    return HeadLoss(tables)
