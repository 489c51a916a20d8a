"""A Llama-style decoder-only language model: RMSNorm, RoPE, SwiGLU, tied embeddings, SDPA attention.

The model maps token IDs to logits (or to the hidden states its head takes) and nothing else: it
never shifts labels and never computes a loss (`tstool.training.loss` does). Read top-down: norm, rotary
embedding, attention, MLP, block, model.

Layout and Hugging Face export. Modules mirror `transformers.LlamaForCausalLM` except for two fused
projections (one matmul instead of three, or two, as nanoGPT's `c_attn`):
- `attn.qkv_proj.weight` stacks rows [q_proj; k_proj; v_proj], sizes n_heads*head_dim, then
  kv_heads*head_dim twice;
- `mlp.gate_up_proj.weight` stacks rows [gate_proj; up_proj], ffn_hidden each.
RoPE uses the rotate-half convention of `transformers`, so the row slices load into LlamaForCausalLM
unchanged and give the same logits (`hf_state_dict` does the mapping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tstool.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale and no bias or mean subtraction."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin tables, (max_len, head_dim) each, in the rotate-half layout of HF Llama.

    HF rotates with x*cos + rotate_half(x)*sin where rotate_half(x) = cat(-x2, x1). Since
    cat(-x2, x1)*cat(s, s) == cat(x2, x1)*cat(-s, s) exactly, folding the sign into the table lets the
    rotation be one `roll` instead of a split, a negation and a cat.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, head_dim/2)
    return torch.cat([freqs, freqs], dim=-1).cos(), torch.cat([-freqs, freqs], dim=-1).sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, heads, head_dim) by position tables cos/sin (T, 1, head_dim)."""
    # Tables in x's dtype as HF does, so bf16 activations under autocast are not promoted to fp32.
    return x * cos.to(x.dtype) + x.roll(x.size(-1) // 2, dims=-1) * sin.to(x.dtype)


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to `max_len` positions.

    Buffers are allocated on first use with the batch size, dtype and device of the first keys, so
    one cache works under autocast and on any device. `pos` is the number of positions already filled.
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self.pos = 0
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, kv_heads, T, head_dim) at positions pos..pos+T-1; return all keys/values so far."""
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            batch, heads, _, dim = k.shape
            keys = self.keys[layer] = k.new_empty(batch, heads, self.max_len, dim)
            values = self.values[layer] = v.new_empty(batch, heads, self.max_len, dim)
        end = self.pos + k.size(2)
        keys[:, :, self.pos : end] = k
        values[:, :, self.pos : end] = v
        return keys[:, :, :end], values[:, :, :end]


class Attention(nn.Module):
    """Causal self-attention with grouped key/value heads and rotary positions."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        # rows: [q_proj; k_proj; v_proj] of HF Llama
        self.qkv_proj = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, K = self.n_heads, self.kv_heads
        qkv = self.qkv_proj(x).view(B, T, H + 2 * K, self.head_dim)  # (B, T, H+2K, hd)
        # split, not slicing: its backward is one cat instead of zero-filled buffers per slice
        qk, v = qkv.split([H + K, K], dim=2)  # (B, T, H+K, hd), (B, T, K, hd)
        q, k = apply_rope(qk, cos, sin).split([H, K], dim=2)  # q and k rotated in one pass
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, hd); SDPA takes strides
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, pos+T, hd)
        # An explicit mask only for a chunk after cached positions; otherwise SDPA's own causal path.
        # A single new token (T == 1) attends to everything cached, so it needs neither.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T > 1,
            enable_gqa=K != H,
        )  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)) with hidden size exactly `ffn_hidden`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ffn_hidden = cfg.ffn_hidden
        # rows: [gate_proj; up_proj] of HF Llama
        self.gate_up_proj = nn.Linear(cfg.d_model, 2 * cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (B, T, ffn_hidden) each
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), cos, sin, mask, cache, layer))
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


class TinyLlama(nn.Module):
    """Decoder-only LM: tokens (B, T) -> logits (B, T, vocab). The output head is the embedding matrix."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # Derived from the config, so kept out of checkpoints.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: residual output projections scaled so the residual stream's variance does not grow with depth.
        for block in self.layers:
            for proj in (block.attn.o_proj, block.mlp.down_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Unique parameters (the tied embedding/head counted once); equals `cfg.num_params(vocab_size)`."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache:
        """An empty KV cache for incremental decoding with this model, up to `max_seq_len` positions."""
        return KVCache(len(self.layers), self.cfg.max_seq_len)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, d_model) of tokens idx (B, T), at positions cache.pos onwards."""
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(
                f"input reaches position {start + T} but the model's context is max_seq_len={self.cfg.max_seq_len}: "
                "crop the input to the last max_seq_len tokens"
            )
        cos, sin = self.rope_cos[start : start + T, None], self.rope_sin[start : start + T, None]  # (T, 1, hd)
        mask = None
        if start > 0 and T > 1:
            # query i sits at position start+i and may see keys 0..start+i
            keys = torch.arange(start + T, device=idx.device)
            mask = keys <= torch.arange(start, start + T, device=idx.device)[:, None]  # (T, start+T)
        x = self.dropout(self.embed_tokens(idx))  # (B, T, d)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.pos += T
        return self.norm(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, head: bool = True) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens idx (B, T); logits[:, t] depend on idx[:, :t+1] only.

        With head=False, the hidden states the head would take, for a loss that applies the head itself
        (`tstool.training.loss.HeadLoss`): through forward, so that DDP and torch.compile wrappers see the call.
        """
        hidden = self.hidden_states(idx, cache)
        return self.lm_head(hidden) if head else hidden


Model = TinyLlama


def hf_state_dict(model: TinyLlama) -> dict[str, torch.Tensor]:
    """Weights under `transformers.LlamaForCausalLM` names; the fused projections split into row slices."""
    cfg = model.cfg
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {
        "model.embed_tokens.weight": model.embed_tokens.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, block in enumerate(model.layers):
        prefix = f"model.layers.{i}."
        q, k, v = block.attn.qkv_proj.weight.split([q_rows, kv_rows, kv_rows])
        gate, up = block.mlp.gate_up_proj.weight.split([cfg.ffn_hidden, cfg.ffn_hidden])
        out |= {
            prefix + "input_layernorm.weight": block.attn_norm.weight,
            prefix + "self_attn.q_proj.weight": q,
            prefix + "self_attn.k_proj.weight": k,
            prefix + "self_attn.v_proj.weight": v,
            prefix + "self_attn.o_proj.weight": block.attn.o_proj.weight,
            prefix + "post_attention_layernorm.weight": block.mlp_norm.weight,
            prefix + "mlp.gate_proj.weight": gate,
            prefix + "mlp.up_proj.weight": up,
            prefix + "mlp.down_proj.weight": block.mlp.down_proj.weight,
        }
    return {name: t.detach().contiguous() for name, t in out.items()}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """AdamW groups: decay on Linear weight matrices only; norms and the tied embedding/head get none."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - embeddings
    decay = [p for p in model.parameters() if id(p) in matrices]
    no_decay = [p for p in model.parameters() if id(p) not in matrices]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> int:
    """Training FLOPs per token (PaLM appendix B): 6N + 12*L*H*Q*T.

    N counts every matmul weight including the tied head (the embedding lookup costs no FLOPs but the
    head does), which is what `cfg.num_params` counts; the second term is attention scores and values.
    """
    return 6 * cfg.num_params(vocab_size) + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
