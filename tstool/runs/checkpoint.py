"""Self-describing checkpoints, written atomically, loaded without unpickling code.

Layout of a run directory:
    config.yaml, tokenizer.json, tokenizer_meta.json, metrics.jsonl
    checkpoints/step-000200/{model.safetensors, state.pt, meta.json}
    checkpoints/latest -> step-000200   (relative symlinks, switched atomically)
    checkpoints/best   -> step-000200   (lowest validation unweighted loss)

A checkpoint folder is written under a temporary name and renamed into place, and the `latest` and
`best` links are replaced with one atomic rename, so a crash at any point leaves the previous
checkpoint whole and pointed to.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_weights_bytes
from safetensors.torch import save_file

from tstool import __version__
from tstool.errors import CheckpointError
from tstool.faults import fault_point

WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
CKPT_DIR = "checkpoints"
REQUIRED_META = ("config", "tokenizer_sha256", "vocab_size", "step", "tstool_version", "config_version")
REQUIRED_STATE = ("optimizer", "scaler", "step", "sampler", "rng", "best_val", "bad_steps")
READ_ATTEMPTS = 5  # reads of a run's `latest` that may find it pruned under them, before giving up
RETRY_WAIT_S = 0.05  # times the attempt number: time for the writer to finish switching `latest`
T = TypeVar("T")


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, Any] | None

    @property
    def step(self) -> int:
        """The training step the checkpoint was saved at: which one a reader got."""
        return int(self.meta["step"])


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (safetensors refuses shared storage)."""
    weights: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weights[name] = tensor
    return weights


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load saved weights; only tied tensors may be absent, anything else missing is a damaged checkpoint."""
    tied = set(model.state_dict()) - set(model_weights(model))
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit the model ({str(exc).splitlines()[-1].strip()})")
    problems = sorted(set(missing) - tied) + sorted(unexpected)
    if problems:
        raise CheckpointError(
            f"the checkpoint's weights do not fit the model ({', '.join(problems[:4])}): "
            "it is damaged or from another model shape"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def point_link(link: Path, target_name: str) -> None:
    """Atomically make `link` a relative symlink to the sibling `target_name`."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def step_dir_name(step: int) -> str:
    """The folder name of step `step`'s checkpoint."""
    return f"step-{step:07d}"


def save_checkpoint(
    run_dir: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """Write checkpoints/step-N atomically and point `latest` at it. Returns the folder."""
    ckpt_root = run_dir / CKPT_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS))
        fault_point("save:weights")
        with open(tmp / STATE, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point("save:state")
        _write_json(tmp / META, {**meta, "step": step, "tstool_version": __version__})
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("save:before-rename")
    if final.exists():  # the same step saved again (e.g. interrupted right after a checkpoint)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    fault_point("save:before-link")
    point_link(ckpt_root / "latest", name)
    return final


def mark_best(run_dir: Path, checkpoint: Path) -> None:
    point_link(run_dir / CKPT_DIR / "best", checkpoint.name)


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete numbered checkpoints beyond the newest `keep_last`, never those latest/best point to."""
    ckpt_root = run_dir / CKPT_DIR
    protected = {(ckpt_root / link).resolve() for link in ("latest", "best") if (ckpt_root / link).is_symlink()}
    numbered = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    removed = []
    for path in numbered[:-keep_last]:
        if path.resolve() not in protected:
            shutil.rmtree(path)
            removed.append(path)
    for stale in ckpt_root.glob(".step-*.tmp"):  # left by a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)
    for stale in [*ckpt_root.glob(".latest.*.tmp"), *ckpt_root.glob(".best.*.tmp")]:  # a crash mid-switch
        stale.unlink(missing_ok=True)
    return removed


class CheckpointVanished(CheckpointError):
    """A checkpoint folder or file that is not there (any more): pruned while it was read, or deleted."""


def _follow(path: Path) -> Path:
    """`path` with its links resolved now, so every later read comes from the one folder it named."""
    return path.resolve() if path.is_symlink() else path


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder (its `latest` checkpoint). Links (`latest`, `best`) are followed
    once: the folder returned is the one they named at that moment, for the caller to read whole."""
    latest = path / CKPT_DIR / "latest"
    for candidate in (path, latest):
        folder = _follow(candidate)
        if (folder / META).is_file():
            return folder
    for link in (latest, path):
        if link.is_symlink():  # its folder was pruned after the link moved on, or deleted
            raise CheckpointVanished(
                f"{link} points to {link.resolve().name}, which is gone (pruned by a run still training, or "
                "deleted): try again, or pass a checkpoint folder"
            )
    if path.exists():
        raise CheckpointError(
            f"{path} holds no checkpoint (no {META} and no {CKPT_DIR}/latest): pass a run or checkpoint folder"
        )
    raise CheckpointError(f"checkpoint {path} does not exist: pass a run folder or a checkpoint folder")


def _moves(path: Path) -> bool:
    """Whether `path` names its checkpoint through a link (a run folder's `latest`) that a run may move on."""
    return path.is_symlink() or (path / CKPT_DIR / "latest").is_symlink()


def _vanished(folder: Path, exc: OSError | CheckpointVanished, moves: bool) -> CheckpointVanished:
    """What a file missing mid-read means: a damaged checkpoint if its folder is still there, else a pruned one."""
    if folder.is_dir():
        if isinstance(exc, CheckpointVanished):
            return exc
        return CheckpointVanished(f"{exc.filename or exc} is missing: the checkpoint is damaged; pass another one")
    if moves:
        return CheckpointVanished(
            f"checkpoint {folder} was pruned while it was read, {READ_ATTEMPTS} times in a row (the run writing it "
            "saves and prunes very often): try again"
        )
    return CheckpointVanished(
        f"checkpoint {folder} was deleted while it was read (a run still training prunes its old checkpoints): "
        "pass the run folder to read its latest checkpoint"
    )


def _replaced(folder: Path, before: os.stat_result) -> bool:
    """Whether another folder of the same name (the step saved again) took `folder`'s place since `before`.
    Pruned after the read is fine: every file was open by then, and open files stay whole."""
    try:
        return not os.path.samestat(before, os.stat(folder))
    except FileNotFoundError:
        return False


def read_consistently(path: Path, read: Callable[[Path], T]) -> T:
    """`read(folder)` of the checkpoint folder `path` resolves to, whole from that one folder.

    A run that is training moves `latest` on and prunes the folder it named, perhaps while `read` is
    reading it: then the checkpoint is resolved again and read again, a few times.
    """
    moves = _moves(path)
    problem: CheckpointVanished | None = None
    for attempt in range(READ_ATTEMPTS if moves else 1):
        if attempt:
            time.sleep(RETRY_WAIT_S * attempt)  # time for the writer to finish switching `latest`
        folder = path
        try:
            folder = resolve_checkpoint(path)
            before = os.stat(folder)
            result = read(folder)
            if not _replaced(folder, before):
                return result
            problem = CheckpointVanished(f"checkpoint {folder} was saved again while it was read: try again")
        except (CheckpointVanished, FileNotFoundError) as exc:
            problem = _vanished(folder, exc, moves)
    assert problem is not None
    raise problem


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointVanished(f"{path / META} is missing: the checkpoint was deleted, or is not a checkpoint")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / META} is unreadable ({exc.__class__.__name__}): the checkpoint is damaged")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / META} is not a JSON object: the checkpoint is damaged")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CheckpointError(f"{path / META} lacks {', '.join(missing)}: the checkpoint is damaged or not from tstool")
    if _version_tuple(str(meta["tstool_version"])) > _version_tuple(__version__):
        raise CheckpointError(
            f"{path} was written by tstool {meta['tstool_version']}, "
            f"newer than this tstool {__version__}: upgrade tstool"
        )
    return meta


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The meta of the checkpoint `path` names (a run folder: its latest), safe while that run trains."""
    return read_consistently(path, read_meta)


def load_checkpoint(path: Path, with_state: bool = False) -> Checkpoint:
    """Load weights (safetensors) and optionally the training state (tensors and plain data only).

    A run folder's `latest` is read whole even while the run trains and prunes (see `read_consistently`).
    """
    return read_consistently(path, lambda folder: _read_folder(folder, with_state))


def _read_folder(path: Path, with_state: bool) -> Checkpoint:
    """One checkpoint folder; a missing file raises FileNotFoundError, for `read_consistently` to retry.

    Every file is opened first, within moments of each other, and read through its handle after: a prune
    that comes once they are open no longer matters, as open files stay whole.
    """
    with contextlib.ExitStack() as files:
        weights_file = files.enter_context(_open(path / WEIGHTS))
        state_file = files.enter_context(_open(path / STATE)) if with_state else None
        meta = read_meta(path)
        weights = _read_weights(path, weights_file)
        state = _read_state(path, state_file) if state_file is not None else None
    return Checkpoint(path=path, meta=meta, weights=weights, state=state)


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path} could not be read ({exc.strerror}): the checkpoint is damaged")


def _read_weights(path: Path, handle: BinaryIO) -> dict[str, torch.Tensor]:
    try:
        return load_weights_bytes(handle.read())
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path / WEIGHTS} could not be read ({exc}): the checkpoint is damaged")


def _read_state(path: Path, handle: BinaryIO) -> dict[str, Any]:
    """The training state: tensors and plain data only, with every key a resume needs."""
    try:
        state = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path / STATE} holds objects other than tensors and plain data; refusing to load it "
            "(it could run code): use a checkpoint written by tstool"
        )
    except (OSError, RuntimeError, EOFError) as exc:
        first_line = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise CheckpointError(f"{path / STATE} could not be read ({first_line}): the checkpoint is damaged")
    missing = [key for key in REQUIRED_STATE if key not in state] if isinstance(state, dict) else list(REQUIRED_STATE)
    if missing:
        raise CheckpointError(
            f"{path / STATE} lacks {', '.join(missing)}: the checkpoint is damaged or not from tstool; "
            "resume from another checkpoint or start a new run"
        )
    return state
