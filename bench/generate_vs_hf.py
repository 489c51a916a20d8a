"""Greedy decoding speed at batch 1: tstool with its KV cache, tstool recomputing the whole context
each step, and transformers' generate() on the exported model, all with the same prompt, weights,
threads and number of new tokens. Value: tstool (KV cache) tokens/s over transformers' tokens/s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from rich.console import Console

from bench import (
    Result,
    devices,
    hf_twin,
    interleaved,
    model_config,
    table,
    threads_note,
    tokenizer,
    tstool_model,
)
from tstool.config import GenerateConfig
from tstool.analysis.generate import DEFAULT_PROMPTS, decode
from tstool.model.llama import TinyLlama

PRESET = "tiny"
NEW_TOKENS = 100
REPEATS = 3
TARGET = 1.0


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


def measure(device: torch.device, console: Console) -> float:
    """Time the three decoders on one device, print their table, return tstool (KV cache) over HF."""
    tok = tokenizer()
    model = tstool_model(model_config(PRESET), tok.vocab_size, device).eval()
    prompt = tok.encode(DEFAULT_PROMPTS[0])
    settings = GenerateConfig(temperature=0.0, max_new_tokens=NEW_TOKENS)
    generator = torch.Generator(device).manual_seed(0)  # unused by greedy decoding, required by the signature
    outputs: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        theirs = hf_twin(model, tok, Path(tmp) / "hf").eval()
        ids = torch.tensor([prompt], device=device)

        def ours_cached() -> None:
            outputs["tstool, KV cache"] = decode(model, prompt, settings, generator, tok.eot_id)[0][0].tokens

        def ours_uncached() -> None:
            outputs["tstool, no cache"] = decode_without_cache(model, prompt, NEW_TOKENS, tok.eot_id)

        def hf_generate() -> None:
            with torch.inference_mode():
                out = theirs.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
                )
            outputs["transformers generate()"] = [t for t in out[0, len(prompt) :].tolist() if t != tok.eot_id]

        seconds = interleaved(
            {
                "tstool, KV cache": ours_cached,
                "tstool, no cache": ours_uncached,
                "transformers generate()": hf_generate,
            },
            REPEATS,
        )
    hf = "transformers generate()"
    rate = {name: len(outputs[name]) / seconds.median(name) for name in seconds}
    # tokens/s ratio = time ratio, scaled by the tokens each side made (equal unless one stopped at EOS)
    versus_hf = {name: seconds.ratio(hf, name) * len(outputs[name]) / len(outputs[hf]) for name in seconds}
    title = f"generate_vs_hf: {PRESET} preset, greedy, batch 1, prompt {len(prompt)} tokens, {device.type}"
    report = table(title, "decoder", "new tokens", "tok/s (median)", "vs HF (paired median)", "same tokens as HF")
    for name, value in rate.items():
        same = outputs[name] == outputs[hf]
        report.add_row(name, str(len(outputs[name])), f"{value:,.0f}", f"{versus_hf[name]:.2f}", str(same))
    console.print(report)
    return versus_hf["tstool, KV cache"]


def run(console: Console) -> Result:
    ratio = min(measure(device, console) for device in devices())
    threads_note(console)
    return Result("generate_vs_hf", ratio, "tok/s ratio (KV cache vs HF, min over devices)", TARGET, ratio >= TARGET)
