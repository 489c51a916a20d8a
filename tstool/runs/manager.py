"""The checkpoint policy of a training run: when to save, which checkpoint is best, and how many to keep.
The trainer reports steps and validation losses; this decides and writes."""

from __future__ import annotations

import errno
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from tstool.errors import CheckpointError
from tstool.runs import checkpoint as ckpt


def as_os_error(exc: OSError | SafetensorError) -> OSError:
    """safetensors reports a failed write as SafetensorError("... (os error N) ..."): recover the OSError."""
    if isinstance(exc, OSError):
        return exc
    found, where = re.search(r"os error (\d+)", str(exc)), re.search(r'at path "([^"]+)"', str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), where.group(1) if where else None)


class CheckpointManager:
    """Saves every `interval` steps, whenever validation improves (marked `best`), and at the end of a
    run; keeps the last `keep_last` numbered checkpoints. Only the writing process (rank 0) has one."""

    def __init__(self, run_path: Path, interval: int, keep_last: int) -> None:
        self.run_path, self.interval, self.keep_last = run_path, interval, keep_last
        self.best_val = math.inf  # lowest validation unweighted loss so far; kept in the training state
        self.last_saved: Path | None = None

    @property
    def best_val_loss(self) -> float | None:
        return None if math.isinf(self.best_val) else self.best_val

    def resumed(self, path: Path, best_val: float) -> None:
        """A run continued from checkpoint `path`, which counts as saved at its step."""
        self.best_val, self.last_saved = best_val, path

    def improves(self, val_loss: float) -> bool:
        """Whether `val_loss` is the best so far; it becomes the best if it is."""
        if val_loss < self.best_val:
            self.best_val = val_loss
            return True
        return False

    def saved_at(self, step: int) -> bool:
        return self.last_saved is not None and self.last_saved.name == ckpt.step_dir_name(step)

    def due(self, step: int) -> bool:
        """Whether the interval asks for a checkpoint at `step` that is not written yet."""
        return step % self.interval == 0 and not self.saved_at(step)

    def save(
        self, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], meta: dict[str, Any], best: bool
    ) -> Path:
        """Write the step's checkpoint, prune old ones, and mark it `best` if asked."""
        try:
            path = ckpt.save_checkpoint(self.run_path, step, weights, state, meta)
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(self._save_failure(step, as_os_error(exc))) from None
        ckpt.prune(self.run_path, self.keep_last)
        if best:
            ckpt.mark_best(self.run_path, path)
        self.last_saved = path
        return path

    def _save_failure(self, step: int, exc: OSError) -> str:
        """What went wrong, by errno: only a full disk asks for disk space."""
        latest = self.run_path / ckpt.CKPT_DIR / "latest"
        previous = latest.resolve() if latest.is_symlink() and latest.resolve().is_dir() else None
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint is left"
        failed = f"saving the step {step} checkpoint failed"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{failed} ({exc.strerror or exc}); {kept}: free disk space, then --resume auto"
        if exc.errno == errno.ENOENT:
            # The folder was deleted under the writer: by another program, or by hand.
            return (
                f"{failed}: {exc.filename or 'its folder'} vanished while it was written (No such file or "
                f"directory), so something else deleted files in {self.run_path}; {kept}: "
                "keep other programs out of the run folder, then --resume auto"
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{failed} ({exc.strerror or exc}); {kept}: make {self.run_path} writable, then --resume auto"
        return f"{failed} ({exc.strerror or exc}); {kept}: fix the cause, then --resume auto"

    def last_good(self) -> Path | None:
        """The checkpoint `latest` points to, if any."""
        latest = self.run_path / ckpt.CKPT_DIR / "latest"
        return ckpt.resolve_checkpoint(self.run_path) if latest.exists() else None
