"""The benchmarks' code paths, on small shapes and single rounds: the paired timer and its quartiles,
the losses and steps each side runs, and each benchmark end to end where that is cheap. No timings
are asserted: they belong to `python -m bench`, on a machine quiet enough to read them."""

import importlib
import json
import statistics

import pytest
import torch
from rich.console import Console

from bench import (
    Result,
    Spread,
    Timings,
    article_loss,
    batch,
    fast_paths,
    generate_vs_hf,
    interleaved,
    logit_adjusted,
    loss_overhead,
    memory,
    mfu_cpu,
    muon,
    on_logits,
    paired_rounds,
    plain_loss,
    preset_batch,
    preset_step,
    tokenizer,
    train_vs_hf,
    tstool_loss,
    tstool_model,
)
from bench.__main__ import BENCHMARKS
from tstool.config import resolve
from tstool.training.optim import Muon, build_optimizer

CPU = torch.device("cpu")


@pytest.fixture
def console() -> Console:
    return Console(width=120, record=True)


def debug_model_and_batch() -> tuple:
    tok = tokenizer()
    model = tstool_model(resolve("debug").model, tok.vocab_size, CPU)
    return tok, model, *batch(tok.vocab_size, 2, 16, CPU)


def test_sides_alternate_in_reversed_order_each_round_after_warmup() -> None:
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=2, calls=2)
    assert calls == ["a", "b"] * 2 + ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert [len(times["a"]), len(times["b"])] == [3, 3]


def test_paired_rounds_keep_each_sides_measurement() -> None:
    measured = iter([1.0, 2.0, 4.0, 3.0])  # round 1: a, b; round 2: b, a
    times = paired_rounds({"a": lambda: next(measured), "b": lambda: next(measured)}, rounds=2)
    assert times == {"a": [1.0, 3.0], "b": [2.0, 4.0]}


def test_ratio_is_the_median_of_paired_rounds() -> None:
    # a load spike in round 2 slows both sides: the paired ratio ignores it, a ratio of medians does not
    times = Timings({"hf": [2.0, 8.0, 2.2, 2.1], "tstool": [1.0, 4.0, 1.0, 1.0]})
    assert times.ratio("hf", "tstool").median == statistics.median([2.0, 2.0, 2.2, 2.1])
    assert times.median("hf") / times.median("tstool") != times.ratio("hf", "tstool").median


def test_quartiles_show_how_far_single_rounds_stray() -> None:
    steady = Timings({"hf": [1.00, 1.01, 0.99, 1.00, 1.02, 0.98], "tstool": [1.0] * 6})
    noisy = Timings({"hf": [1.00, 1.30, 0.70, 1.00, 1.40, 0.60], "tstool": [1.0] * 6})
    spreads = [times.ratio("hf", "tstool") for times in (steady, noisy)]
    assert spreads[0].median == spreads[1].median  # the median alone cannot tell them apart
    for spread in spreads:
        assert spread.low <= spread.median <= spread.high
    assert spreads[1].high - spreads[1].low > 10 * (spreads[0].high - spreads[0].low)
    assert Spread.of([1.5]) == Spread(1.5, 1.5, 1.5)  # one round: no spread to show


def test_result_line_says_what_the_target_guards(capsys: pytest.CaptureFixture[str]) -> None:
    Result.of("x", Spread(1.0712345, 1.02, 1.1), "ratio", 1.05, True, "a guard").emit()
    Result("y", None, "ratio", 1.05, None, "skipped").emit()
    measured, skipped = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert measured == {
        "name": "x",
        "value": 1.0712,
        "unit": "ratio",
        "target": 1.05,
        "ok": True,
        "guards": "a guard",
        "quartiles": [1.02, 1.1],
    }
    assert (skipped["value"], skipped["ok"], skipped["quartiles"]) == (None, None, None)


def test_aten_calls_count_the_article_breakdown() -> None:
    tok, model, x, y = debug_model_and_batch()
    with torch.no_grad():
        hidden = model(x, head=False)
    weight = model.lm_head.weight
    plain = loss_overhead.aten_calls(on_logits(plain_loss), hidden, weight, y)
    weighted = loss_overhead.aten_calls(article_loss(tok, CPU), hidden, weight, y)
    assert 5 <= plain < weighted


@pytest.mark.slow
def test_tstools_side_of_train_vs_hf_computes_hfs_plain_loss_through_any_forward() -> None:
    """At weight 1 tstool's loss is the plain CE that HF's side computes on its logits, whether the
    hidden states come from the model or from a wrapper of it (torch.compile)."""
    tok, model, x, y = debug_model_and_batch()
    expected = plain_loss(model(x), y)
    for forward in (None, torch.compile(model, backend="eager")):
        torch.testing.assert_close(tstool_loss(model, tok, weight=1.0, forward=forward)(x, y), expected)


def test_naive_loss_is_the_article_weighted_mean() -> None:
    tok, model, x, y = debug_model_and_batch()
    logits = model(x)
    ids = sorted(set(y.flatten().tolist()))[:3]  # stand-ins for article IDs that occur in the targets
    weights = torch.where(torch.isin(y, torch.tensor(ids)), 5.0, 1.0).flatten()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    torch.testing.assert_close(loss_overhead.naive_loss(ids, 5.0)(logits, y), (weights * ce).sum() / weights.sum())


@pytest.mark.slow
def test_loss_overhead_runs_end_to_end(console: Console) -> None:
    result = loss_overhead.run(console, rounds={"cpu": 1, "cuda": 1}, batch_size={"cpu": 2, "cuda": 2}, preset="debug")
    assert result.value is not None and result.quartiles is not None
    assert result.target == loss_overhead.TARGET and result.ok == (result.value <= result.target)
    assert loss_overhead.DEFAULT in console.export_text()


@pytest.mark.slow
def test_logit_adjusted_runs_end_to_end(console: Console) -> None:
    result = logit_adjusted.run(console, rounds={"cpu": 2, "cuda": 2}, batch_size={"cpu": 2, "cuda": 2})
    assert result.name == "logit_adjusted" and result.value is not None
    assert result.target == logit_adjusted.TARGET and result.ok == (result.value <= result.target)
    assert "logit-adjusted" in console.export_text()


def test_fast_paths_without_their_device_are_skipped_not_failed(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fast_paths, "devices", lambda: [CPU])
    result = fast_paths.run(console)
    assert (result.value, result.ok, result.target) == (None, None, fast_paths.TARGET)
    assert "cuda absent" in console.export_text()


def test_fast_paths_measure_each_path_on_its_device(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    # the CPU has no fast path: switching it on and off runs the same reference loss on both sides
    monkeypatch.setattr(fast_paths, "FAST_PATHS", (fast_paths.FastPath("reference on both sides", "cpu"),))
    monkeypatch.setattr(fast_paths, "PRESET", "debug")
    result = fast_paths.run(console, rounds=1)
    assert result.value is not None and result.ok == (result.value >= fast_paths.TARGET)


def test_preset_step_trains_with_the_presets_optimizer() -> None:
    tok, cfg = tokenizer(), resolve("debug", {"train.optimizer": "muon"})
    model = tstool_model(cfg.model, tok.vocab_size, CPU)
    before = model.layers[0].mlp.down_proj.weight.detach().clone()
    optimizer = build_optimizer(model, cfg.train, CPU)
    preset_step(model, tok, cfg, *preset_batch(cfg, tok.vocab_size, CPU), optimizer=optimizer)()
    assert isinstance(optimizer.optimizers[0], Muon)
    assert not torch.equal(model.layers[0].mlp.down_proj.weight, before)


@pytest.mark.slow
def test_torch_muon_as_compared_makes_tstools_first_update() -> None:
    """The comparison is fair: torch's Muon gets the same parameters, learning rate, decay, momentum and
    update scale, so from the same gradients its first update is tstool's, up to its bf16 Newton-Schulz."""
    tok, cfg = tokenizer(), resolve("debug", {"train.optimizer": "muon"})
    models = [tstool_model(cfg.model, tok.vocab_size, CPU) for _ in range(2)]
    own = build_optimizer(models[0], cfg.train, CPU)
    theirs = muon.with_torch_muon(build_optimizer(models[1], cfg.train, CPU))
    assert isinstance(theirs.optimizers[0], torch.optim.Muon)
    for model, optimizer in zip(models, (own, theirs), strict=True):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
        optimizer.step()
    start = tstool_model(cfg.model, tok.vocab_size, CPU).layers[0].attn.qkv_proj.weight
    updates = [model.layers[0].attn.qkv_proj.weight.detach() - start for model in models]
    assert torch.nn.functional.cosine_similarity(updates[0].flatten(), updates[1].flatten(), dim=0) > 0.99
    torch.testing.assert_close(updates[0].norm(), updates[1].norm(), rtol=0.05, atol=0)


def test_bf16_on_a_cpu_is_targeted_only_where_hardware_makes_it_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    fp32, bf16 = (train_vs_hf.Case("tiny", dtype, CPU) for dtype in ("fp32", "bf16"))
    faster = {fp32: 100.0, bf16: 150.0}
    slower = {fp32: 100.0, bf16: 50.0}
    for hardware, rates, expected in ((True, faster, True), (False, faster, False), (True, slower, False)):
        monkeypatch.setattr(train_vs_hf, "cpu_has_bf16", lambda hardware=hardware: hardware)
        assert train_vs_hf.targeted(bf16, rates) is expected
    assert train_vs_hf.targeted(fp32, {})


def test_mfu_peak_is_the_fastest_layout_of_the_models_products() -> None:
    shapes = mfu_cpu.gemm_shapes(resolve("debug").model, 64, tokens=8)
    assert (8, 32, 64) in shapes and shapes[-1] == (1024, 1024, 1024)
    flops, product = mfu_cpu.best_product([(8, 16, 4), (4, 8, 2)], torch.float32)
    assert flops in (2 * 8 * 16 * 4, 2 * 4 * 8 * 2) and product().dim() == 2


@pytest.mark.slow
def test_decoding_without_the_cache_gives_the_cached_tokens() -> None:
    tok = tokenizer()
    model = tstool_model(resolve("debug").model, tok.vocab_size, CPU).eval()
    prompt = tok.encode("Once upon a time")
    cached = generate_vs_hf.decoders(model, torch.nn.Identity(), prompt, tok.eot_id)[generate_vs_hf.CACHED]()
    assert generate_vs_hf.decode_without_cache(model, prompt, 10, tok.eot_id) == cached[:10]


@pytest.mark.slow
def test_memory_measures_two_steps_of_a_preset() -> None:
    found = memory.measure("debug", None)
    assert found["peak_mb"] >= found["startup_mb"] > 0
    assert found["tokens"] == resolve("debug").train.batch_size * resolve("debug").model.max_seq_len


def test_every_listed_benchmark_is_a_module_with_a_run() -> None:
    for name in BENCHMARKS:
        assert callable(importlib.import_module(f"bench.{name}").run)


@pytest.mark.slow
def test_train_vs_hf_runs_end_to_end(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(train_vs_hf.BATCH, ("debug", "fp32"), 1)
    monkeypatch.setitem(train_vs_hf.BATCH, ("debug", "bf16"), 1)
    monkeypatch.setattr(train_vs_hf, "COMPILED", None)  # compiling takes half a minute
    result = train_vs_hf.run(console, rounds={"fp32": 1, "bf16": 1}, presets=("debug",))
    assert result.value is not None and result.quartiles is not None
    assert "debug fp32 cpu" in console.export_text()
