"""Fault injection for the reliability tests, isolated here: TSTOOL_FAULT names where a run should
crash, fill the disk or see a NaN. Without the variable nothing here runs in a training step.

Values (comma-separated): `save:weights`, `save:state`, `save:before-rename`, `save:before-link`
(the process dies there, as on SIGKILL), the same names with `:enospc` (the write fails as on a full
disk), and `nan@K` or `nan@K-M` (the loss of optimizer steps K..M is NaN).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from tstool.training.loss import HeadLoss, LossParts

CRASH_EXIT_CODE = 17


def _faults() -> list[str]:
    return [f.strip() for f in os.environ.get("TSTOOL_FAULT", "").split(",") if f.strip()]


def fault_point(name: str) -> None:
    """Die or fail here if the environment asks for it."""
    faults = _faults()
    if name in faults:
        os._exit(CRASH_EXIT_CODE)
    if f"{name}:enospc" in faults:
        raise OSError(28, "No space left on device (simulated)")


def nan_steps() -> list[tuple[int, int]]:
    """The (first, last) optimizer steps whose loss TSTOOL_FAULT makes NaN."""
    spans = []
    for fault in _faults():
        if fault.startswith("nan@"):
            first, _, last = fault[4:].partition("-")
            spans.append((int(first), int(last or first)))
    return spans


class NanInjectingLoss(HeadLoss):
    """A loss whose weighted sum is NaN at the steps `nan_steps` names; `step()` says the step running."""

    def __init__(self, inner: HeadLoss, spans: list[tuple[int, int]], step: Callable[[], int]) -> None:
        super().__init__(inner.tables, inner.ignore_index)
        self.inner, self.spans, self.step = inner, spans, step

    def __call__(self, hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor) -> LossParts:
        parts = self.inner(hidden, head_weight, targets)
        if torch.is_grad_enabled() and any(first <= self.step() <= last for first, last in self.spans):
            parts.weighted_sum = parts.weighted_sum * float("nan")
        return parts


def with_injected_faults(loss: HeadLoss, step: Callable[[], int]) -> HeadLoss:
    """`loss`, or a NaN-injecting wrapper of it when TSTOOL_FAULT asks for NaN steps."""
    spans = nan_steps()
    return NanInjectingLoss(loss, spans, step) if spans else loss
