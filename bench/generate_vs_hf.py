"""Greedy decoding speed at batch 1: tstool with its KV cache, tstool recomputing the whole context
each step, and transformers' generate() on the exported model, all with the same prompt, weights,
threads and number of new tokens, in paired rounds.

Value: tstool's (KV cache) tokens/s over transformers', median over rounds, the worst device.
Target: decoding with tstool's KV cache is no slower than generate() (median ratio >= 1.0).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from bench import (
    Result,
    Spread,
    devices,
    hf_twin,
    interleaved,
    model_config,
    table,
    threads_note,
    tokenizer,
    tstool_model,
)
from tstool.analysis.generate import DEFAULT_PROMPTS, decode
from tstool.config import GenerateConfig
from tstool.model.llama import TinyLlama

PRESET = "tiny"
NEW_TOKENS = 100
ROUNDS = 10
TARGET = 1.0
GUARDS = "decoding with tstool's KV cache is no slower than transformers' generate() (median >= 1.0)"
CACHED, UNCACHED, HF = "tstool, KV cache", "tstool, no cache", "transformers generate()"


@torch.inference_mode()
def decode_without_cache(model: TinyLlama, prompt: list[int], new_tokens: int, eot_id: int) -> list[int]:
    """Greedy decoding that feeds the whole sequence every step: the cost the KV cache saves."""
    idx = torch.tensor([prompt], device=model.embed_tokens.weight.device)
    for _ in range(new_tokens):
        token = model(idx)[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, token], dim=1)
        if token.item() == eot_id:
            break
    return idx[0, len(prompt) :].tolist()


def decoders(
    model: TinyLlama, hf: torch.nn.Module, prompt: list[int], eot_id: int
) -> dict[str, Callable[[], list[int]]]:
    """The three greedy decoders, each returning the new tokens (end-of-text left out)."""
    settings = GenerateConfig(temperature=0.0, max_new_tokens=NEW_TOKENS)
    device = model.embed_tokens.weight.device
    generator = torch.Generator(device).manual_seed(0)  # unused by greedy decoding, required by the signature
    ids = torch.tensor([prompt], device=device)

    def hf_generate() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
        return [t for t in out[0, len(prompt) :].tolist() if t != eot_id]

    return {
        CACHED: lambda: decode(model, prompt, settings, generator, eot_id)[0][0].tokens,
        UNCACHED: lambda: decode_without_cache(model, prompt, NEW_TOKENS, eot_id),
        HF: hf_generate,
    }


def measure(device: torch.device, console: Console, rounds: int) -> Spread:
    """Time the three decoders on one device, print their table, return tstool (KV cache) over HF."""
    tok = tokenizer()
    model = tstool_model(model_config(PRESET), tok.vocab_size, device).eval()
    prompt = tok.encode(DEFAULT_PROMPTS[0])
    with tempfile.TemporaryDirectory() as tmp:
        calls = decoders(model, hf_twin(model, tok, Path(tmp) / "hf").eval(), prompt, tok.eot_id)
        outputs = {name: call() for name, call in calls.items()}
        seconds = interleaved(calls, rounds, warmup=0)
    # tokens/s ratio = time ratio, scaled by the tokens each side made (equal unless one stopped at EOS)
    versus_hf = {
        name: Spread.of([r * len(outputs[name]) / len(outputs[HF]) for r in seconds.ratios(HF, name)]) for name in calls
    }
    title = f"generate_vs_hf: {PRESET} preset, greedy, batch 1, prompt {len(prompt)} tokens, {device.type}"
    report = table(title, "decoder", "new tokens", "tok/s (median)", "vs HF: median (quartiles)", "same tokens as HF")
    for name, tokens in outputs.items():
        rate = len(tokens) / seconds.median(name)
        report.add_row(name, str(len(tokens)), f"{rate:,.0f}", str(versus_hf[name]), str(tokens == outputs[HF]))
    console.print(report)
    return versus_hf[CACHED]


def run(console: Console, rounds: int = ROUNDS) -> Result:
    worst = min((measure(device, console, rounds) for device in devices()), key=lambda spread: spread.median)
    threads_note(console)
    unit = "tokens/s ratio, tstool (KV cache) / transformers generate() (worst device)"
    return Result.of("generate_vs_hf", worst, unit, TARGET, worst.median >= TARGET, GUARDS)
