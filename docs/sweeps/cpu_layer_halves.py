"""One decoder layer's MLP and attention, forward and backward, tstool's forms against `transformers`'
LlamaDecoderLayer halves with the same weights, in paired rounds on the CPU (bench/README.md, tenth
session). MLP: the fused gate/up product (`MLP.SPLIT_PRODUCTS_ON = ()`), the two products with the
weight's halves (the CPU's default since then), HF's. Attention: tstool's one q/k/v product, two
(qk | v) and three (q | k | v) products with the weight's parts, HF's. Ratios are to tstool's first form.

From the repository root: `python docs/sweeps/cpu_layer_halves.py PRESET BATCH ROUNDS`, e.g. `small 2 60`.
"""

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import hf_twin, interleaved, model_config, tokenizer, tstool_model
from tstool.model.llama import MLP, apply_rope, linear
from tstool.training.runtime import keep_freed_memory

keep_freed_memory()  # as `tstool train` and `python -m bench` run
preset, batch_size, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tok, cfg = tokenizer(), model_config(preset)
model = tstool_model(cfg, tok.vocab_size, torch.device("cpu"))
T = cfg.max_seq_len
with tempfile.TemporaryDirectory() as folder:
    hf = hf_twin(model, tok, Path(folder))
    torch.manual_seed(0)
    x0, upstream = torch.randn(batch_size, T, cfg.d_model), torch.randn(batch_size, T, cfg.d_model)
    block, layer = model.layers[0], hf.model.layers[0]
    attn, mlp = block.attn, block.mlp
    cos, sin = model.rope_cos[:T, None], model.rope_sin[:T, None]
    hf_rope = hf.model.rotary_emb(x0, torch.arange(T)[None])
    H, K, hd = attn.n_heads, attn.kv_heads, attn.head_dim

    def attention_in_parts(x: torch.Tensor, parts: int) -> torch.Tensor:
        B = x.size(0)
        if parts == 3:
            wq, wk, wv = attn.qkv_proj.weight.split([H * hd, K * hd, K * hd])
            q = apply_rope(linear(x, wq).view(B, T, H, hd), cos, sin)
            k = apply_rope(linear(x, wk).view(B, T, K, hd), cos, sin)
        else:
            wqk, wv = attn.qkv_proj.weight.split([(H + K) * hd, K * hd])
            q, k = apply_rope(linear(x, wqk).view(B, T, H + K, hd), cos, sin).split([H, K], dim=2)
        v = linear(x, wv).view(B, T, K, hd)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=K != H
        )
        return attn.o_proj(y.transpose(1, 2).reshape(B, T, H * hd))

    def mlp_with(split_on: tuple[str, ...]):
        def forward(x: torch.Tensor) -> torch.Tensor:
            MLP.SPLIT_PRODUCTS_ON = split_on
            return mlp(x)

        return forward

    def forward_and_backward(forward):
        def step() -> None:
            forward(x0.clone().requires_grad_()).backward(upstream)

        return step

    groups = {
        "MLP": {
            "tstool, one product": mlp_with(()),
            "tstool, two products": mlp_with(("cpu",)),
            "transformers": layer.mlp,
        },
        "attention": {
            "tstool, one product": lambda x: attn(x, cos, sin, None, None, 0),
            "tstool, qk | v": lambda x: attention_in_parts(x, 2),
            "tstool, q | k | v": lambda x: attention_in_parts(x, 3),
            "transformers": lambda x: layer.self_attn(
                hidden_states=x, position_embeddings=hf_rope, attention_mask=None
            )[0],
        },
    }
    for group, forwards in groups.items():
        seconds = interleaved({name: forward_and_backward(f) for name, f in forwards.items()}, rounds)
        first = next(iter(forwards))
        for name in forwards:
            print(
                f"{preset} {group}, {name}: {seconds.median(name) * 1e3:.2f} ms, "
                f"vs {first} {seconds.ratio(name, first):.3f} ({seconds.ratio_spread(name, first)})"
            )
