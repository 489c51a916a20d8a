"""The MLP's gate and up products: one product with the fused weight, split in two (`MLP.forward`
off the CPU), against two products with the weight's halves (on the CPU), in full `tiny` and `small`
training steps on one device (bench/README.md, tenth session). Median step-time ratio, split / fused,
over paired rounds, with the quartiles of single rounds. (Run on the H100 before `MLP.SPLIT_PRODUCTS_ON`
existed, when this script swapped `MLP.forward` itself: the same two computations.)

From the repository root: `python docs/sweeps/mlp_split_weight.py DEVICE ROUNDS` (DEVICE cpu or cuda).
"""

import sys

import torch

from bench import (
    batch,
    interleaved,
    model_config,
    on_hidden,
    on_logits,
    plain_loss,
    tokenizer,
    train_step,
    tstool_model,
)
from tstool.model.llama import MLP
from tstool.training.runtime import keep_freed_memory

keep_freed_memory()  # as `tstool train` and `python -m bench` run
device, rounds = torch.device(sys.argv[1]), int(sys.argv[2])


def with_split_on(devices: tuple[str, ...], step):
    def run() -> None:
        MLP.SPLIT_PRODUCTS_ON = devices
        step()

    return run


tok = tokenizer()
cases = (
    [("tiny", 4, "fp32"), ("small", 2, "fp32")]
    if device.type == "cpu"
    else [("tiny", 16, "fp32"), ("tiny", 16, "bf16")]
)
for preset, batch_size, dtype in cases:
    cfg = model_config(preset)
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, batch_size, cfg.max_seq_len, device)
    step = train_step(model, on_hidden(model, on_logits(plain_loss)), x, y, dtype)
    seconds = interleaved({"fused": with_split_on((), step), "split": with_split_on((device.type,), step)}, rounds)
    print(
        f"{preset} {dtype} {device.type} {x.numel()} tokens: fused {seconds.median('fused') * 1e3:.2f} ms, "
        f"split {seconds.median('split') * 1e3:.2f} ms, split/fused {seconds.ratio('split', 'fused'):.3f} "
        f"({seconds.ratio_spread('split', 'fused')})"
    )
