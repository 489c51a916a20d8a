"""Optimizers: Newton-Schulz orthogonalisation, Muon's update size and parameter split, the schedule."""

from __future__ import annotations

import pytest
import torch

from tstool.config import ModelConfig, TrainConfig
from tstool.model.llama import TinyLlama
from tstool.training.optim import Muon, Optimizers, build_optimizer, learning_rate, orthogonalise


@pytest.mark.parametrize("shape", [(3, 48, 80), (3, 80, 48)])
def test_orthogonalise_approximates_u_v_transpose(shape: tuple[int, int, int]) -> None:
    matrices = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    result = orthogonalise(matrices, torch.float32)
    assert result.shape == matrices.shape
    u, _, vh = torch.linalg.svd(matrices, full_matrices=False)
    exact = u @ vh
    # The quintic iteration trades exactness for speed: singular values land in about (0.6, 1.2).
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.5 and singular.max() < 1.3
    cosine = (result * exact).sum(dim=(-2, -1)) / (result.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1)))
    assert (cosine > 0.95).all()


@pytest.mark.slow
@pytest.mark.parametrize("decades", [0, 6])
def test_gram_form_matches_the_direct_iteration(decades: int) -> None:
    gen = torch.Generator().manual_seed(2)
    left, _ = torch.linalg.qr(torch.randn(2, 40, 40, generator=gen, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(2, 200, 40, generator=gen, dtype=torch.float64))
    spectrum = torch.logspace(0, -decades, 40, dtype=torch.float64)  # up to a 1e6 spread of singular values
    wide = (left * spectrum) @ right.mT  # (2, 40, 200)
    for matrices in (wide, wide.mT):
        direct = orthogonalise(matrices, torch.float64, gram=False)
        torch.testing.assert_close(orthogonalise(matrices, torch.float64, gram=True), direct, rtol=0, atol=1e-9)
        # what Muon runs on the CPU: float32, where a 5x wider matrix takes the Gram form by default
        automatic = orthogonalise(matrices.float(), torch.float32)
        assert torch.equal(automatic, orthogonalise(matrices.float(), torch.float32, gram=True))
        assert ((automatic.double() - direct).norm() / direct.norm()).item() < 1e-3
        # bf16 keeps the direct form
        bf16 = matrices.bfloat16()
        assert torch.equal(orthogonalise(bf16, torch.bfloat16), orthogonalise(bf16, torch.bfloat16, gram=False))


def test_muon_update_rms_matches_adamw_scale() -> None:
    weight = torch.nn.Parameter(torch.zeros(64, 256))
    weight.grad = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    lr = 0.01
    Muon([weight], lr=lr, weight_decay=0.0, momentum=0.9).step()
    # 0.2*sqrt(max dim) on an update whose singular values are ~1 gives an RMS of ~0.2*lr, as AdamW's.
    assert weight.detach().pow(2).mean().sqrt().item() == pytest.approx(0.2 * lr, rel=0.25)


def test_muon_applies_decoupled_weight_decay() -> None:
    weight = torch.nn.Parameter(torch.ones(8, 8))
    weight.grad = torch.zeros(8, 8)
    Muon([weight], lr=0.1, weight_decay=0.5, momentum=0.9).step()
    assert torch.allclose(weight.detach(), torch.full((8, 8), 0.95))  # 1 - lr*decay; a zero update adds nothing


def test_muon_takes_hidden_matrices_and_adamw_the_rest() -> None:
    model = TinyLlama(ModelConfig(d_model=32, n_layers=2, n_heads=2, ffn_hidden=48, max_seq_len=16), 64)
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(optimizer, Optimizers)
    muon, adamw = optimizer.optimizers
    muon_params = {id(p) for g in muon.param_groups for p in g["params"]}
    adamw_params = {id(p) for g in adamw.param_groups for p in g["params"]}
    linears = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)} - {id(model.lm_head.weight)}
    assert muon_params == linears
    assert adamw_params == {id(p) for p in model.parameters()} - linears
    assert id(model.embed_tokens.weight) in adamw_params  # the tied embedding/head stays with AdamW
    assert isinstance(build_optimizer(model, TrainConfig(), torch.device("cpu")), torch.optim.AdamW)


def test_schedule_warms_up_then_decays_to_min_lr() -> None:
    cfg = TrainConfig(lr=1e-2, min_lr=1e-3, warmup_steps=10, max_steps=110)
    assert learning_rate(0, cfg) == pytest.approx(1e-3)
    assert learning_rate(9, cfg) == pytest.approx(1e-2)
    assert learning_rate(60, cfg) == pytest.approx((1e-2 + 1e-3) / 2)
    assert learning_rate(110, cfg) == pytest.approx(1e-3)
    assert all(learning_rate(s, cfg) >= learning_rate(s + 1, cfg) for s in range(10, 110))
