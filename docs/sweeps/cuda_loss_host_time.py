"""Where the last 2-3% of CUDA `loss_overhead` went: a `tiny` step's host-side costs, plain CE against
`ArticleLoss.from_hidden`'s default (head + Triton loss replayed from a CUDA graph) and variants of it,
in one process (bench/README.md, tenth session).

0. the variants' loss and gradient norms, which must agree;
1. host time of one loss forward and backward, no sync within blocks of 40, and of the replay alone;
2. full steps (fused AdamW), 60 paired rounds: each variant's median time ratio to plain;
3. a profile of 10 steps: ATen calls and self CPU time per step, plain against the default.

Variants: `Lean` is the autograd Function that became `_ReplayedHeadLoss` in the tenth session (one
`_foreach_mul` in the backward, no materialised zeros); "scale" replaces the bench's mean over the
totals' weight column with a precomputed scale; "weight not copied" replays a graph that reads the head
weight where it lives. Run twice on one H100: first against the ninth session's code (commit addc9c1,
whose `_head_sums_and_gradients` took no gradient dtypes, so `capture_on` passed none), then as here.
From the repository root: `python docs/sweeps/cuda_loss_host_time.py`.
"""
import statistics
import time
import traceback
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench import article_loss, batch, model_config, on_hidden, on_logits, plain_loss, tokenizer, train_step, tstool_model
from tstool.training import loss as L
from tstool.data.articles import resolve_articles
from tstool.config import ArticleConfig

device = torch.device("cuda")
tok = tokenizer()
cfg = model_config("tiny")
model = tstool_model(cfg, tok.vocab_size, device)
x, y = batch(tok.vocab_size, 16, cfg.max_seq_len, device)
articles = resolve_articles(tok, ArticleConfig(), require_single=True)
tables = L.LossTables.build(articles.weight_table(5.0), articles.mask_table()).to(device)
AL = L.ArticleLoss(tables)


class Lean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, captured, copy_weight):
        captured.hidden.copy_(hidden)
        if copy_weight:
            captured.weight.copy_(weight)
        captured.targets.copy_(targets)
        captured.replay()
        captured.replays += 1
        ctx.captured, ctx.replay = captured, captured.replays
        totals = captured.totals.clone()
        ctx.mark_non_differentiable(totals)
        ctx.set_materialize_grads(False)
        return captured.weighted_sum.clone(), totals

    @staticmethod
    def backward(ctx, grad_sum, _t):
        c = ctx.captured
        gh, gw = torch._foreach_mul([c.grad_hidden, c.grad_weight], grad_sum)
        return gh, gw, None, None, None


def capture_on(weight):
    """A graph that reads the head weight where it lives (no copy)."""
    rows, width, vocab = x.numel(), weight.size(1), weight.size(0)
    hidden = torch.zeros(rows, width, device=device)
    targets = torch.zeros(rows, dtype=torch.long, device=device)
    inputs = (hidden, weight.detach(), targets, tables, -100, True, (torch.float32, torch.float32))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        L._head_sums_and_gradients(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = L._head_sums_and_gradients(*inputs)
    return L._Captured(graph.replay, hidden, weight, targets, *outputs)


W = model.lm_head.weight
with torch.no_grad():
    h_probe = model(x, head=False)
AL._graph(h_probe.reshape(-1, h_probe.size(-1)), W, torch.float32)
cap = next(iter(AL.graphs.values()))
cap_nocopy = capture_on(W)
one_over = None


def mean(ws, totals):
    return ws / totals[:, L.WEIGHT].sum().float()


def lean(copy_weight, mean_fn=mean):
    c = cap if copy_weight else cap_nocopy
    def loss(hidden, weight, targets):
        ws, totals = Lean.apply(hidden.view(-1, hidden.size(-1)), weight, targets.view(-1), c, copy_weight)
        return mean_fn(ws, totals)
    return loss


def scaled(hidden, weight, targets):
    return AL.from_hidden(hidden, weight, targets).weighted_sum * one_over


default = article_loss(tok, device)
losses = {
    "plain": on_logits(plain_loss),
    "default": default,
    "default, scale not mean": scaled,
    "lean": lean(True),
    "lean, weight not copied": lean(False),
    "lean, no copy, scale": lean(False, lambda ws, totals: ws * one_over),
}
with torch.no_grad():
    parts = AL.from_hidden(h_probe, W, y)
    one_over = (1.0 / parts.weight_sum).float()

# 0. equal losses and gradients
try:
    hid = h_probe.detach().requires_grad_()
    ref = None
    for name, fn in losses.items():
        if name == "plain":
            continue
        W.grad = None
        hid.grad = None
        value = fn(hid, W, y)
        value.backward()
        got = (value.item(), hid.grad.norm().item(), W.grad.norm().item())
        ref = ref or got
        print(f"check {name:28s} {got}")
    W.grad = None
except Exception:
    traceback.print_exc()

# 1. host time of the loss alone (fwd+bwd), no sync inside a block of 40
try:
    hid = h_probe.detach().requires_grad_()
    host = defaultdict(list)
    for rnd in range(25):
        for name, fn in list(losses.items()) + [("replay only", None)]:
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(40):
                if fn is None:
                    cap.replay()
                else:
                    fn(hid, W, y).backward()
            host[name].append((time.perf_counter() - start) / 40)
    torch.cuda.synchronize()
    for name, ts in host.items():
        print(f"host us/call {name:28s} min {min(ts)*1e6:7.1f}  median {statistics.median(ts)*1e6:7.1f}")
except Exception:
    traceback.print_exc()

# 2. full steps: host enqueue time (no final sync) and synced time, interleaved
try:
    steps = {name: train_step(model, on_hidden(model, fn), x, y, "fp32") for name, fn in losses.items()}
    for s in steps.values():
        for _ in range(3):
            s()
    wall = defaultdict(list)
    for rnd in range(60):
        for name, s in steps.items():
            start = time.perf_counter()
            s()
            wall[name].append(time.perf_counter() - start)
    for name, ts in wall.items():
        ratios = [a / b for a, b in zip(ts, wall["plain"])]
        print(f"step {name:28s} median {statistics.median(ts)*1e3:6.2f} ms  ratio vs plain {statistics.median(ratios):.3f}")
    # GPU-boundness: a step's GPU time from events
    for name in ("plain", "default"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        gpu = []
        for _ in range(10):
            start.record(); steps[name](); end.record(); end.synchronize()
            gpu.append(start.elapsed_time(end))
        print(f"event-timed step {name}: {statistics.median(gpu):.2f} ms")
except Exception:
    traceback.print_exc()

# 3. profiler: self CPU time per op per step, plain vs default
try:
    per = {}
    for name in ("plain", "default"):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                steps[name]()
        rows = {}
        for ev in prof.key_averages():
            rows[ev.key] = (ev.count / 10, ev.self_cpu_time_total / 10, ev.self_device_time_total / 10)
        per[name] = rows
        print(f"== {name}: total self CPU {sum(r[1] for r in rows.values()):.0f} us/step, device {sum(r[2] for r in rows.values()):.0f} us/step")
    keys = set(per["plain"]) | set(per["default"])
    diff = sorted(keys, key=lambda k: -abs(per["default"].get(k, (0, 0, 0))[1] - per["plain"].get(k, (0, 0, 0))[1]))
    print(f"{'op':60s} {'n plain':>8s} {'n dflt':>8s} {'cpu plain':>10s} {'cpu dflt':>10s}")
    for k in diff[:30]:
        a, b = per["plain"].get(k, (0, 0, 0)), per["default"].get(k, (0, 0, 0))
        print(f"{k[:60]:60s} {a[0]:8.1f} {b[0]:8.1f} {a[1]:10.1f} {b[1]:10.1f}")
except Exception:
    traceback.print_exc()
