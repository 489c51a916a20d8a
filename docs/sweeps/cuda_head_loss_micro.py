"""Head + loss forward and backward on CUDA: plain (F.linear, then mean F.cross_entropy) against
`ArticleLoss.from_hidden` (article weight 5) in each of its CUDA paths: the default (head and loss
replayed from a CUDA graph, the loss in Triton), Triton without a graph, the graph with ATen
operations, and eager. Microseconds per call, synchronised after 200 calls (10 untimed first).

Run on one H100 in the ninth session (bench/README.md), from the repository root:
`python docs/sweeps/cuda_head_loss_micro.py`. Width 160 (the `tiny` preset's d_model).
"""

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tstool.training.loss import ArticleLoss, LossTables

WIDTH = 160
ARTICLE_IDS = [262, 257, 281, 383, 317, 1052]  # GPT-2's " the", " a", " an", " The", " A", " An"


def microseconds(call: Callable[[], None], calls: int = 200) -> float:
    for _ in range(10):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def case(vocab: int, rows: int, dtype: torch.dtype) -> dict[str, float]:
    """Microseconds per call of each side for `rows` hidden states and a `vocab`-row head."""
    weights = torch.ones(vocab)
    weights[ARTICLE_IDS] = 5
    tables = LossTables.build(weights, weights > 1).to(torch.device("cuda"))
    hidden = torch.randn(rows, WIDTH, device="cuda").requires_grad_()
    head = (torch.randn(vocab, WIDTH, device="cuda") * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    autocast = {"device_type": "cuda", "dtype": dtype, "enabled": dtype != torch.float32}

    def tstool(loss: ArticleLoss) -> Callable[[], None]:
        def call() -> None:
            with torch.autocast(**autocast):
                parts = loss.from_hidden(hidden, head, targets)
            (parts.weighted_sum / parts.weight_sum.float()).backward()
            hidden.grad = head.grad = None

        return call

    def plain() -> None:
        with torch.autocast(**autocast):
            logits = F.linear(hidden, head)
        F.cross_entropy(logits.float(), targets).backward()
        hidden.grad = head.grad = None

    return {
        "plain": microseconds(plain),
        "default": microseconds(tstool(ArticleLoss(tables))),
        "Triton no graph": microseconds(tstool(ArticleLoss(tables, cuda_graphs=False))),
        "graph ATen": microseconds(tstool(ArticleLoss(tables, fused=False))),
        "eager": microseconds(tstool(ArticleLoss(tables, fused=False, cuda_graphs=False))),
    }


def main() -> None:
    for vocab, rows in ((4096, 4096), (50257, 2048)):
        for dtype in (torch.float32, torch.bfloat16):
            times = case(vocab, rows, dtype)
            print(f"V={vocab} N={rows} {dtype}: " + ", ".join(f"{k} {v:.0f}us" for k, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
