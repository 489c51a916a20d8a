"""The CPU training loss alone against plain CE, both with the tied head, forward and backward, at 1,024
tokens of the `tiny` width (bench/README.md, tenth session): first whole calls in paired rounds, then
their pieces one by one (tstool: head product, `_sums_and_gradient`, the two gradient products; plain:
head product, `F.cross_entropy` forward and backward, `F.linear`'s two gradient products).

From the repository root: `python docs/sweeps/cpu_head_loss_alone.py`.
"""

import statistics
import time

import torch
import torch.nn.functional as F

from bench import article_loss, interleaved, on_logits, plain_loss, tokenizer
from tstool.training import loss
from tstool.data.articles import resolve_articles
from tstool.config import ArticleConfig
from tstool.training.runtime import keep_freed_memory

keep_freed_memory()  # as `tstool train` and `python -m bench` run
tok = tokenizer()
rows, width, vocab = 1024, 160, tok.vocab_size
torch.manual_seed(0)
hidden0, targets = torch.randn(rows, width), torch.randint(0, vocab, (rows,))
weight = (torch.randn(vocab, width) * 0.02).requires_grad_()


def forward_and_backward(head_loss):
    def step() -> None:
        head_loss(hidden0.clone().requires_grad_()[None], weight, targets[None]).backward()
        weight.grad = None

    return step


sides = {"plain CE": on_logits(plain_loss), "tstool, weight 1": article_loss(tok, torch.device("cpu"), weight=1.0)}
seconds = interleaved({name: forward_and_backward(f) for name, f in sides.items()}, 60)
for name in sides:
    print(f"{name}: {seconds.median(name) * 1e3:.2f} ms, vs plain CE {seconds.ratio(name, 'plain CE'):.3f}")


def milliseconds(call, calls: int = 40) -> float:
    for _ in range(5):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


head, grad_logits = weight.detach(), torch.randn(rows, vocab)
articles = resolve_articles(tok, ArticleConfig(), require_single=True)
tables = loss.LossTables.build(articles.weight_table(1.0), articles.mask_table())
logits = hidden0 @ head.t()
grad_hidden, grad_weight = torch.empty(rows, width), torch.zeros(vocab, width)


def cross_entropy() -> None:
    leaf = logits.clone().requires_grad_()
    F.cross_entropy(leaf, targets).backward()


pieces = {
    "head product": lambda: hidden0 @ head.t(),
    "copy of the logits (inside both rows below)": lambda: logits.clone(),
    "tstool: _sums_and_gradient": lambda: loss._sums_and_gradient(
        logits.clone(), targets, tables, -100, every_row=False
    ),
    "tstool: gradient @ weight": lambda: torch.mm(grad_logits, head, out=grad_hidden),
    "tstool: zero + addmm_ weight gradient": lambda: grad_weight.zero_().addmm_(grad_logits.t(), hidden0),
    "plain: F.cross_entropy forward and backward": cross_entropy,
    "plain: F.linear's two gradient products": lambda: (grad_logits @ head, grad_logits.t() @ hidden0),
}
for name, call in pieces.items():
    print(f"{name}: {milliseconds(call):.2f} ms")
