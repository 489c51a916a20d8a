import os
import subprocess
import sys
from pathlib import Path

import pytest

from tstool.training.runtime import fresh_kernel_cache, keep_freed_memory

# Ten training steps of a small model whose logits (8 x 256 x 4,096 float32) and their gradient are
# 33.5 MB each, like `tiny`'s; prints the page faults of those steps after three warm-up steps.
STEPS_SCRIPT = """
import resource, sys, torch
import torch.nn.functional as F
from tstool.config import ModelConfig
from tstool.model.llama import TinyLlama
from tstool.training.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
model = TinyLlama(ModelConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, max_seq_len=256), 4096)
x = torch.randint(0, 4096, (8, 256))
def step():
    F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
before = faults()
for _ in range(10):
    step()
print(faults() - before)
"""
LOGIT_PAGES = 10 * 2 * (8 * 256 * 4096 * 4) // 4096  # ten steps of logits and gradient in fresh 4 KiB pages


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", STEPS_SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in() -> None:
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc")
    plain = page_faults("plain")
    if plain < LOGIT_PAGES // 2:
        pytest.skip(f"only {plain} page faults without the setting (huge pages?): nothing to compare")
    assert page_faults("keep") < plain // 5


def test_a_fresh_kernel_cache_is_empty_and_the_callers_cache_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/kept")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with fresh_kernel_cache():
        inside = {name: os.environ[name] for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
        assert "/somewhere/kept" not in inside.values()
        for folder in map(Path, inside.values()):
            assert folder.parent.is_dir() and not folder.exists()  # nothing cached: every kernel is built
            folder.mkdir()  # as inductor and Triton do, to write what they build
            (folder / "kernel.so").write_bytes(b"")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/kept"
    assert "TRITON_CACHE_DIR" not in os.environ
    assert not any(Path(folder).exists() for folder in inside.values())  # deleted with what was built
