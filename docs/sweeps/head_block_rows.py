"""Rows per block of `_HeadLoss` (the head inside the CPU training loss) against whole logits, in full
`tiny` training steps (bench/README.md, tenth session). Each side's median step time and its paired
median ratio to whole logits, with the quartiles of single rounds.

From the repository root: `python docs/sweeps/head_block_rows.py VOCAB DTYPE BATCH ROUNDS ROWS,ROWS,...`
with VOCAB `shipped` (4,096 tokens) or `gpt2` (50,257), e.g. `shipped fp32 8 40 512,2048`.
"""

import sys

import torch

from bench import GPT2_TOKENIZER, batch, interleaved, model_config, train_step, tstool_loss, tstool_model
from tstool.training import loss
from tstool.training.runtime import keep_freed_memory
from tstool.data.tokenizer import load_tokenizer

keep_freed_memory()  # as `tstool train` and `python -m bench` run
vocab, dtype, batch_size, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
block_rows = [int(rows) for rows in sys.argv[5].split(",")]
tok = load_tokenizer(GPT2_TOKENIZER if vocab == "gpt2" else None)
cfg = model_config("tiny")
model = tstool_model(cfg, tok.vocab_size, torch.device("cpu"))
x, y = batch(tok.vocab_size, batch_size, cfg.max_seq_len, torch.device("cpu"))


def in_blocks_of(rows: int):
    step = train_step(model, tstool_loss(model, tok), x, y, dtype)

    def run() -> None:
        loss.HEAD_BLOCK_LOGITS = rows * tok.vocab_size
        step()

    return run


steps = {"whole": train_step(model, tstool_loss(model, tok, whole_logits=True), x, y, dtype)}
steps |= {f"inside {rows}": in_blocks_of(rows) for rows in block_rows}
seconds = interleaved(steps, rounds)
for name in steps:
    print(
        f"{vocab} {dtype} {x.numel()} tokens: {name:12s} {seconds.median(name) * 1e3:7.1f} ms, "
        f"vs whole {seconds.ratio(name, 'whole'):.3f} ({seconds.ratio_spread(name, 'whole')})"
    )
