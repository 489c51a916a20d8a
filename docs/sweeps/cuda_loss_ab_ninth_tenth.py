"""The ninth session's replayed head + loss against the tenth's, in full CUDA steps (bench/README.md,
tenth session). Ninth: gradients kept in the products' dtype, cast and scaled one by one in the
backward. Tenth: the graph casts them to the leaves' dtypes and the backward scales both with one
`_foreach_mul`. Each side's median step-time ratio to plain CE over 150 paired rounds, for `tiny` in
bf16 at train_vs_hf's batch (512 tokens) and at 4,096 tokens, and in fp32 at 4,096 tokens.

The ninth session's `tstool/loss.py` is read from git (commit addc9c1). From the repository root, on
a CUDA machine: `python docs/sweeps/cuda_loss_ab_ninth_tenth.py`.
"""

import importlib.util
import statistics
import subprocess
import sys
import time

import torch

from bench import batch, model_config, on_hidden, on_logits, plain_loss, tokenizer, train_step, tstool_model
from tstool.training import loss as new_loss
from tstool.data.articles import resolve_articles
from tstool.config import ArticleConfig

device = torch.device("cuda")
tok = tokenizer()
articles = resolve_articles(tok, ArticleConfig(), require_single=True)
NINTH_SESSION = "addc9c1"


def ninth_session_loss():
    """tstool/loss.py as the ninth session left it, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{NINTH_SESSION}:tstool/loss.py"], capture_output=True, text=True, check=True
    ).stdout
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("ninth_session_loss", loader=None))
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "ninth_session_loss.py", "exec"), module.__dict__)
    return module


old_loss = ninth_session_loss()
for preset, rows, dtype in (("tiny", 2, "bf16"), ("tiny", 16, "bf16"), ("tiny", 16, "fp32")):
    cfg = model_config(preset)
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, rows, cfg.max_seq_len, device)

    def article(module):
        tables = module.LossTables.build(articles.weight_table(1.0), articles.mask_table()).to(device)
        loss = module.ArticleLoss(tables)

        def mean(hidden, weight, targets):
            parts = loss.from_hidden(hidden, weight, targets)
            return parts.weighted_sum / parts.weight_sum.float()

        return mean

    sides = {"plain": on_logits(plain_loss), "ninth": article(old_loss), "tenth": article(new_loss)}
    steps = {name: train_step(model, on_hidden(model, fn), x, y, dtype) for name, fn in sides.items()}
    for s in steps.values():
        for _ in range(3):
            s()
    times = {name: [] for name in steps}
    for _ in range(150):
        for name, s in steps.items():
            start = time.perf_counter()
            s()
            times[name].append(time.perf_counter() - start)
    for name in ("ninth", "tenth"):
        ratios = [a / b for a, b in zip(times[name], times["plain"])]
        print(
            f"{preset} {dtype} {x.numel()} tokens: {name} vs plain {statistics.median(ratios):.3f} "
            f"(step {statistics.median(times[name]) * 1e3:.2f} ms)"
        )
    ratios = [a / b for a, b in zip(times["tenth"], times["ninth"])]
    print(f"  tenth/ninth {statistics.median(ratios):.3f}")
