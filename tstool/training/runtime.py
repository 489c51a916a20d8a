"""Where and how training runs: device, autocast precision, host memory, seeding and the DDP process group."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from tstool.errors import DeviceError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# mallopt parameters from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
# what torch.compile's default backend, inductor, builds kernels with
COMPILE_TOOLCHAINS = {"cpu": "a C++ compiler (g++ or clang++; CXX names another)", "cuda": "Triton"}
# read by inductor and Triton each time they look for a cached kernel
KERNEL_CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an unavailable device asked for by name is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps was asked for but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[dtype])


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 1 GiB for reuse instead of handing them back to the OS.

    By default every block over 32 MB is mapped afresh and unmapped when freed, and the top of the heap
    is trimmed, so each training step's logits and their gradient (33.5 MB each in `tiny`) arrive as new
    pages. Faulting those in costs about 15% of a `tiny` step on 2 CPU cores (`python -m bench
    freed_memory`). With this, freed blocks stay in the heap and most are reused (ten such steps: a few
    thousand page faults instead of 330,000), so memory stays near its peak through a run instead of
    going up and down every step. Returns False (and changes nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


def configure_process(threads: int | None) -> None:
    """Process-wide settings of a training process, set once by the command that starts it: torch's CPU
    threads (None keeps torch's default) and the allocator's `keep_freed_memory`."""
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()


def check_dtype(device: torch.device, dtype: str) -> None:
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU does not support bf16: use --dtype fp16 or fp32")
    if dtype == "fp16" and device.type == "cpu":
        raise DeviceError("--dtype fp16 is for GPUs: use --dtype bf16 or fp32 on CPU")


@contextlib.contextmanager
def fresh_kernel_cache() -> Iterator[None]:
    """torch.compile's on-disk kernel caches in an empty temporary folder, so that compiling builds."""
    before = {name: os.environ.get(name) for name in KERNEL_CACHE_VARIABLES}
    with tempfile.TemporaryDirectory(prefix="tstool-kernels-") as folder:
        os.environ.update({name: os.path.join(folder, name.lower()) for name in KERNEL_CACHE_VARIABLES})
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@functools.cache  # the toolchain does not change within a process
def check_compile(device: torch.device) -> None:
    """`--compile` builds kernels with a C++ compiler on CPU and with Triton on CUDA. Building one for a
    two-operation function in an empty kernel cache, so that the toolchain really runs, turns a missing
    one into a one-line error before the run folder is touched instead of a traceback at the first step."""
    from torch._dynamo.exc import ShortenTraceback  # here: slow to import, and only --compile needs it

    try:
        with fresh_kernel_cache():
            torch.compile(lambda t: t * 2 + 1)(torch.zeros(4, device=device))
    except ShortenTraceback as error:  # compile failures: BackendCompilerFailed wraps most, TritonMissing not
        cause = getattr(error, "inner_exception", None) or error
        first_line = next((line for line in str(cause).splitlines() if line.strip()), "")
        tool = COMPILE_TOOLCHAINS.get(device.type, "the toolchain it names")
        raise DeviceError(
            f"--compile cannot build kernels on {device.type} ({type(cause).__name__}: {first_line}): "
            f"install {tool}, or train without --compile"
        ) from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    return Distributed(rank=rank, local_rank=local_rank, world=world)


def process_device(device: torch.device, ddp: Distributed) -> torch.device:
    return torch.device("cuda", ddp.local_rank) if device.type == "cuda" and ddp.enabled else device


def all_reduce_sum(tensor: torch.Tensor, ddp: Distributed) -> torch.Tensor:
    if ddp.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown_distributed(ddp: Distributed) -> None:
    if ddp.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rng_state() -> dict:
    """RNG states as tensors and plain data, so they load with weights_only=True."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_matmul_flops(device: torch.device, dtype: str, size: int = 1024, repeats: int = 8) -> float:
    """Measured matmul FLOP/s of this device and precision: the denominator of MFU."""
    import time

    torch_dtype = AUTOCAST_DTYPES.get(dtype, torch.float32)
    # Inputs from the CPU with a private generator: the global RNG (dropout) must not move.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=torch_dtype)
    # nn.Linear multiplies by a transposed weight; on CPUs without bf16 hardware the plain layout is
    # far slower, which would make MFU read above 1 and cost seconds at start-up.
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=torch_dtype).t()
    a @ b  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while done < repeats and (done == 0 or time.perf_counter() - start < 0.5):  # at most ~0.5 s
        a @ b
        done += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * done / (time.perf_counter() - start)
