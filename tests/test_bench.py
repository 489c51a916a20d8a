"""The benchmarks' measuring tools: the paired timer and the ATen call count (not the timings themselves)."""

import statistics

import torch

from bench import (
    Timings,
    article_loss,
    batch,
    interleaved,
    on_logits,
    plain_loss,
    tokenizer,
    tstool_loss,
    tstool_model,
)
from bench.loss_overhead import aten_calls
from tstool.config import resolve


def test_sides_alternate_after_warmup() -> None:
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert [len(times["a"]), len(times["b"])] == [3, 3]


def test_ratio_is_the_median_of_paired_rounds() -> None:
    # a load spike in round 2 slows both sides: the paired ratio ignores it, a ratio of medians does not
    times = Timings({"hf": [2.0, 8.0, 2.2, 2.1], "tstool": [1.0, 4.0, 1.0, 1.0]})
    assert times.ratio("hf", "tstool") == statistics.median([2.0, 2.0, 2.2, 2.1])
    assert times.median("hf") / times.median("tstool") != times.ratio("hf", "tstool")


def test_aten_calls_count_the_article_breakdown() -> None:
    tok = tokenizer()
    model = tstool_model(resolve("debug").model, tok.vocab_size, torch.device("cpu"))
    x, y = batch(tok.vocab_size, 2, 16, torch.device("cpu"))
    with torch.no_grad():
        hidden = model(x, head=False)
    weight = model.lm_head.weight
    plain = aten_calls(on_logits(plain_loss), hidden, weight, y)
    weighted = aten_calls(article_loss(tok, torch.device("cpu"), whole_logits=True), hidden, weight, y)
    assert 5 <= plain < weighted


def test_ratio_quartiles_show_how_far_single_rounds_stray() -> None:
    steady = Timings({"hf": [1.00, 1.01, 0.99, 1.00, 1.02, 0.98], "tstool": [1.0] * 6})
    noisy = Timings({"hf": [1.00, 1.30, 0.70, 1.00, 1.40, 0.60], "tstool": [1.0] * 6})
    assert steady.ratio("hf", "tstool") == noisy.ratio("hf", "tstool")  # the median alone cannot tell them apart
    spreads = []
    for times in (steady, noisy):
        first, third = times.ratio_quartiles("hf", "tstool")
        assert first <= times.ratio("hf", "tstool") <= third
        spreads.append(third - first)
    assert spreads[1] > 10 * spreads[0]


def test_tstools_side_of_train_vs_hf_computes_hfs_plain_loss_through_any_forward() -> None:
    """At weight 1 tstool's loss, the head inside it, is the plain CE that HF's side computes on its
    logits, whether the hidden states come from the model or from a wrapper of it (torch.compile)."""
    tok = tokenizer()
    model = tstool_model(resolve("debug").model, tok.vocab_size, torch.device("cpu"))
    x, y = batch(tok.vocab_size, 2, 16, torch.device("cpu"))
    expected = plain_loss(model(x), y)
    for forward in (None, torch.compile(model, backend="eager")):
        torch.testing.assert_close(tstool_loss(model, tok, weight=1.0, forward=forward)(x, y), expected)
