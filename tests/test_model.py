import math

import pytest
import torch
import torch.nn.functional as F

from tstool.config import ModelConfig
from tstool.model.llama import Model, flops_per_token, hf_state_dict, param_groups

VOCAB = 97
MHA = dict(d_model=64, n_layers=2, n_heads=4, ffn_hidden=96, max_seq_len=32)
GQA = dict(MHA, n_kv_heads=2)


def make_model(seed: int = 0, **overrides: object) -> Model:
    torch.manual_seed(seed)
    return Model(ModelConfig(**{**MHA, **overrides}), VOCAB).eval()


@pytest.mark.parametrize("overrides", [MHA, GQA, dict(d_model=48, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=77)])
def test_num_parameters_matches_config(overrides: dict) -> None:
    cfg = ModelConfig(**overrides)
    assert Model(cfg, VOCAB).num_parameters() == cfg.num_params(VOCAB)


def test_ffn_hidden_is_used_exactly() -> None:
    model = make_model(ffn_hidden=77)
    assert model.layers[0].mlp.down_proj.in_features == 77
    assert model.layers[0].mlp.gate_up_proj.out_features == 2 * 77


def test_fresh_model_loss_is_near_ln_vocab() -> None:
    torch.manual_seed(1)
    model = Model(ModelConfig(**{**MHA, "max_seq_len": 64}), 512)
    idx, targets = torch.randint(0, 512, (2, 4, 64))
    with torch.no_grad():
        loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    assert abs(loss.item() - math.log(512)) < 0.1 * math.log(512)


def test_residual_projections_have_scaled_init() -> None:
    model = make_model(d_model=64, ffn_hidden=1024)
    expected = 0.02 / math.sqrt(2 * model.cfg.n_layers)
    assert model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.layers[0].mlp.gate_up_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_logits_are_causal_and_unshifted() -> None:
    model = make_model()
    idx = torch.randint(0, VOCAB, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx), model(changed)
    assert before.shape == (2, 16, VOCAB) and before.dtype == torch.float32
    assert torch.equal(before[:, :9], after[:, :9])  # earlier positions never see a later token
    assert not torch.allclose(before[:, 9], after[:, 9])  # position t sees its own token: no shift


def test_without_the_head_the_model_gives_the_hidden_states_its_head_takes() -> None:
    model = make_model()
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        hidden, logits = model(idx, head=False), model(idx)
    assert hidden.shape == (2, 16, model.cfg.d_model)
    assert torch.equal(model.lm_head(hidden), logits)


def greedy(model: Model, prompt: torch.Tensor, steps: int, use_cache: bool) -> torch.Tensor:
    idx = prompt
    cache = model.new_cache() if use_cache else None
    new = prompt
    with torch.no_grad():
        for _ in range(steps):
            logits = model(new if use_cache else idx, cache=cache)
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            idx = torch.cat([idx, token], dim=1)
            new = token
    return idx


@pytest.mark.parametrize("overrides", [MHA, GQA])
def test_kv_cache_generation_matches_full_recompute(overrides: dict) -> None:
    model = make_model(**overrides)
    prompt = torch.randint(0, VOCAB, (3, 7))
    with_cache = greedy(model, prompt, 20, use_cache=True)
    assert torch.equal(with_cache, greedy(model, prompt, 20, use_cache=False))


@pytest.mark.parametrize("overrides", [MHA, GQA])
def test_chunked_prefill_matches_full_forward(overrides: dict) -> None:
    model = make_model(**overrides)
    idx = torch.randint(0, VOCAB, (2, 20))
    cache = model.new_cache()
    with torch.no_grad():
        full = model(idx)
        chunks = [model(idx[:, a:b], cache=cache) for a, b in [(0, 6), (6, 7), (7, 15), (15, 20)]]
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


def test_too_long_input_is_refused() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    cache = model.new_cache()
    model(torch.zeros(1, 30, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="crop"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_dropout_only_in_training() -> None:
    model = make_model(dropout=0.5)
    idx = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(idx), model(idx))
        model.train()
        assert not torch.equal(model(idx), model(idx))


def ids(group: dict) -> set[int]:
    return {id(p) for p in group["params"]}


def test_param_groups_decay_only_linear_matrices() -> None:
    model = make_model(**GQA)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert ids(decay).isdisjoint(ids(no_decay))
    assert ids(decay) | ids(no_decay) == {id(p) for p in model.parameters()}
    assert id(model.embed_tokens.weight) in ids(no_decay)  # also the head: tied
    norms = [model.norm.weight] + [w for b in model.layers for w in (b.attn_norm.weight, b.mlp_norm.weight)]
    assert {id(w) for w in norms} <= ids(no_decay)
    assert all(p.dim() == 2 for p in decay["params"]) and len(decay["params"]) == 4 * model.cfg.n_layers
    torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)  # accepted as given


def test_flops_per_token() -> None:
    cfg = ModelConfig(**MHA)
    expected = 6 * cfg.num_params(VOCAB) + 12 * 2 * 4 * 16 * 32
    assert flops_per_token(cfg, VOCAB, 32) == expected


def test_logits_match_transformers_llama() -> None:
    transformers = pytest.importorskip("transformers")
    model = make_model(**GQA, rope_theta=500.0)
    cfg = model.cfg
    hf_cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(hf_state_dict(model), strict=True)
    idx = torch.randint(0, VOCAB, (2, cfg.max_seq_len))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)
