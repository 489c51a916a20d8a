"""The training loop. Building happens in `Trainer.__init__`; the loop calls small components
(sampler, loss, optimizer schedule, evaluation, checkpoints, metric sinks) and never renders anything:
it reports events through the `emit` callback.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from tstool.analysis.calibration import CorrectionStats, correction_stats, fit_tau
from tstool.config import Config
from tstool.data.articles import ArticleSet, resolve_articles
from tstool.data.batches import BlockSampler, SamplerState, eval_block_ids, gather_blocks, split_block
from tstool.data.packing import load_tokens, require_blocks
from tstool.data.tokenizer import load_tokenizer
from tstool.errors import Interrupted, TrainingHalted
from tstool.fast import head_loss
from tstool.faults import with_injected_faults
from tstool.model.hf_export import check_hf_folder, load_hf_weights
from tstool.model.llama import TinyLlama, flops_per_token
from tstool.runs import checkpoint as ckpt
from tstool.runs.lock import RunLock
from tstool.runs.manager import CheckpointManager
from tstool.runs.metrics_log import MetricsLog
from tstool.runs.run_dir import RunDir
from tstool.training.health import HealthMonitor, ratio_band
from tstool.training.loss import LossParts, LossTables, weighted_cross_entropy
from tstool.training.optim import build_optimizer, learning_rate
from tstool.training.runtime import (
    all_reduce_sum,
    autocast,
    check_compile,
    check_dtype,
    init_distributed,
    peak_matmul_flops,
    process_device,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

Emit = Callable[[dict[str, Any]], None]
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
INIT_LOSS_TOLERANCE = 0.10


@dataclass
class RunOptions:
    out_dir: Path
    resume: str | None = None  # "auto" (the out dir's latest checkpoint) or a checkpoint path
    overwrite: bool = False
    stop_after: int | None = None  # optimizer steps in this invocation
    init_from: Path | None = None  # a Hugging Face Llama folder to start from (ignored when resuming)


@dataclass
class TrainSummary:
    step: int
    max_steps: int
    checkpoint: Path | None
    last_train: dict[str, Any] | None
    last_val: dict[str, Any] | None
    best_val_loss: float | None
    wall_time_s: float
    bad_steps: int
    world: int
    is_main: bool
    ddp_params_in_sync: bool | None


def metrics_from_parts(parts: LossParts) -> dict[str, float | None]:
    values = parts.metrics()
    values["ppl"] = math.exp(values["loss_unweighted"]) if values["loss_unweighted"] is not None else None
    return values


class Trainer:
    def __init__(self, cfg: Config, options: RunOptions, emit: Emit):
        self.lock: RunLock | None = None
        try:
            self._build(cfg, options, emit)
        except BaseException:  # a failed start frees the run folder and leaves it as it was
            if self.lock is not None:
                self.lock.release()
            raise

    def _build(self, cfg: Config, options: RunOptions, emit: Emit) -> None:
        self.cfg, self.options, self.emit = cfg, options, emit
        tc = cfg.train
        device = resolve_device(tc.device)
        check_dtype(device, tc.dtype)
        self.ddp = init_distributed(device)
        self.device = process_device(device, self.ddp)
        if tc.compile:
            check_compile(self.device)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.articles: ArticleSet = resolve_articles(
            self.tokenizer, cfg.articles, require_single=tc.article_weight != 1.0
        )
        if options.init_from is not None:  # checked before the run folder is touched
            check_hf_folder(options.init_from, cfg.model, self.tokenizer)
        self.run_dir = RunDir(options.out_dir)
        if self.ddp.is_main:  # one writer per run folder, from before anything in it is read or written
            self.lock = RunLock.acquire(self.run_dir.path)
        resume_path = self.run_dir.prepare(cfg, self.tokenizer, options.resume, options.overwrite)

        seq_len = cfg.model.max_seq_len
        self.train_tokens = self._load_split("train")
        self.val_tokens = self._load_split("val")
        for split, stream in (("train", self.train_tokens), ("val", self.val_tokens)):
            require_blocks(stream, seq_len, split)
        self.sampler = BlockSampler(
            len(self.train_tokens.tokens), seq_len, tc.batch_size, tc.seed, self.ddp.rank, self.ddp.world
        )
        self.val_ids = eval_block_ids(len(self.val_tokens.tokens), seq_len, tc.eval_batches * tc.batch_size)

        seed_everything(tc.seed)
        self.model = TinyLlama(cfg.model, self.tokenizer.vocab_size).to(self.device)
        self.optimizer = build_optimizer(self.model, tc, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.dtype == "fp16")
        # The CPU copy gives each step's total weight from the targets before they reach the device.
        self.weight_table_cpu = self.articles.weight_table(tc.article_weight)
        mask = self.articles.mask_table()
        tables = LossTables.build(self.weight_table_cpu, mask, tc.logit_adjusted).to(self.device)
        self.val_tables = LossTables.build(self.weight_table_cpu, mask).to(self.device)  # the raw model's numbers
        self.correction: dict[str, Any] | None = None  # the post-hoc correction fitted at the last validation
        self.loss = with_injected_faults(head_loss(tables, self.device, tc.fast_paths), lambda: self.step)
        self.step, self.bad_steps = 0, 0
        self.checkpoints = CheckpointManager(self.run_dir.path, tc.ckpt_interval, tc.keep_last)
        if resume_path is not None:
            self._restore(resume_path)
        else:
            self._self_check()  # on the fresh model: a loaded one is meant to be far below ln(V)
            if options.init_from is not None:
                load_hf_weights(self.model, options.init_from)
        if self.ddp.is_main:  # only now that data, tokenizer and checkpoint have all loaded
            self.run_dir.write(cfg, self.tokenizer, replace=options.overwrite and resume_path is None)
        self.metrics = (
            MetricsLog(self.run_dir.metrics_path, self.step if resume_path else None) if self.ddp.is_main else None
        )
        self.health = HealthMonitor(tc.article_weight)
        self.forward_model: torch.nn.Module = torch.compile(self.model) if tc.compile else self.model
        if self.ddp.enabled:
            self.forward_model = DistributedDataParallel(self.forward_model)
        self.tokens_per_step = tc.batch_size * tc.grad_accum * self.ddp.world * seq_len
        self.flops_per_token = flops_per_token(cfg.model, self.tokenizer.vocab_size, seq_len)
        self.peak_flops = peak_matmul_flops(self.device, tc.dtype)
        self.stop_signal: int | None = None

    # -- building blocks -------------------------------------------------------------------------
    def _load_split(self, split: str):
        def progress(done: int, total: int, tokens: int | None = None) -> None:
            self.emit({"event": "tokenize", "split": split, "done": done, "total": total, "tokens": tokens})

        # Rank 0 fills the cache first so other ranks only read it.
        if self.ddp.enabled and not self.ddp.is_main:
            torch.distributed.barrier()
        stream = load_tokens(self.cfg.data, split, self.tokenizer, progress if self.ddp.is_main else None)
        if self.ddp.enabled and self.ddp.is_main:
            torch.distributed.barrier()
        return stream

    def _loss_parts(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossParts:
        # The head weight is the embedding's, which the wrapped forward uses too, so DDP sees its
        # gradient arrive once, both uses summed, whether or not the head runs inside that forward.
        with autocast(self.device, self.cfg.train.dtype):
            return self.loss(model(x, head=False), self.model.lm_head.weight, y)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _self_check(self) -> None:
        """Labels aligned once, and a fresh model's loss near ln(V): catches the double-shift bug early."""
        probe = BlockSampler(len(self.train_tokens.tokens), self.cfg.model.max_seq_len, 4, self.cfg.train.seed)
        blocks = gather_blocks(self.train_tokens.tokens, probe.next_ids(), self.cfg.model.max_seq_len)
        x, y = split_block(blocks)
        if not torch.equal(y[:, :-1], x[:, 1:]):
            raise TrainingHalted("self-check failed: targets are not the inputs shifted by one token")
        with torch.no_grad():
            unweighted = LossTables.unweighted(self.articles.mask_table()).to(self.device)
            parts = weighted_cross_entropy(self.model(x.to(self.device)), y.to(self.device), unweighted)
        loss, expected = float(parts.ce_sum / parts.token_count), math.log(self.tokenizer.vocab_size)
        if abs(loss - expected) > INIT_LOSS_TOLERANCE * expected:
            raise TrainingHalted(
                f"self-check failed: a fresh model's loss is {loss:.3f}, not within 10% of ln(vocab) = {expected:.3f}"
            )

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "sampler": {"epoch": self.sampler.state.epoch, "cursor": self.sampler.state.cursor},
            "rng": rng_state(),
            "best_val": self.checkpoints.best_val,
            "bad_steps": self.bad_steps,
        }

    def _meta(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "config_version": self.cfg.config_version,
            "tokenizer_sha256": self.tokenizer.sha256,
            "vocab_size": self.tokenizer.vocab_size,
            "article_ids": self.articles.ids,
            "article_forms": [f.text for f in self.articles.forms if f.single_token],
            "epoch": self.sampler.epoch_progress,
            "tokens": self.step * self.tokens_per_step,
            "best_val_loss": self.checkpoints.best_val_loss,
            "article_correction": self.correction,
        }

    def save(self, best: bool = False) -> Path | None:
        if not self.ddp.is_main:
            return None
        path = self.checkpoints.save(self.step, ckpt.model_weights(self.model), self._state(), self._meta(), best)
        self.emit({"event": "checkpoint", "step": self.step, "path": str(path)})
        return path

    def _restore(self, path: Path) -> None:
        loaded = ckpt.load_checkpoint(path, with_state=True)
        self.run_dir.check_compatible(loaded.meta, self.cfg, self.tokenizer)
        ckpt.load_weights(self.model, loaded.weights)
        state = loaded.state
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.bad_steps = int(state["step"]), int(state["bad_steps"])
        self.checkpoints.resumed(loaded.path, float(state["best_val"]))  # a finished run resumed is not re-saved
        self.sampler.load_state(SamplerState(**state["sampler"]))
        set_rng_state(state["rng"])
        self.emit({"event": "resumed", "step": self.step, "path": str(loaded.path)})

    # -- one optimizer step ----------------------------------------------------------------------
    def _train_step(self) -> tuple[LossParts, torch.Tensor, bool]:
        tc = self.cfg.train
        micro = [self.sampler.next_batch(self.train_tokens.tokens) for _ in range(tc.grad_accum)]
        # Normalise by the total weight of the whole step (all micro-batches, all ranks); DDP averages
        # gradients over ranks, so multiply back by the world size.
        total_weight = self._to_device(sum(self.weight_table_cpu[y].sum() for _, y in micro))  # no host sync
        scale = self.ddp.world / all_reduce_sum(total_weight, self.ddp)
        lr = learning_rate(self.step, tc)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        step_parts = LossParts.zeros(self.device)
        for index, (x, y) in enumerate(micro):
            last = index == len(micro) - 1
            sync = contextlib.nullcontext() if last or not self.ddp.enabled else self.forward_model.no_sync()
            with sync:
                parts = self._loss_parts(self.forward_model, self._to_device(x), self._to_device(y))
                self.scaler.scale(parts.weighted_sum * scale).backward()
            step_parts = step_parts + parts.detach()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf"))
        finite = torch.isfinite(step_parts.weighted_sum)
        if not self.scaler.is_enabled():
            finite = finite & torch.isfinite(grad_norm)
        ok = bool(all_reduce_sum(finite.float(), self.ddp).item() == self.ddp.world)
        if ok:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return step_parts, grad_norm, ok

    def _first_step(self) -> tuple[LossParts, torch.Tensor, bool]:
        """`_train_step`, whose warnings (such as a loss that could not be captured in a CUDA graph, so
        runs without one) reach the run's events and live view instead of printing through it."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self._train_step()
        for warning in caught:
            self.emit({"event": "warning", "step": self.step + 1, "message": str(warning.message)})
        return result

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Validation numbers of the raw model (no logit offset), and for a weighted model the fitted
        post-hoc correction (`tstool.analysis.calibration`) with the loss it reaches."""
        self.model.eval()
        parts = LossParts.zeros(self.device)
        stats: CorrectionStats | None = None
        weighted = self.cfg.train.article_weight != 1.0
        mine = self.val_ids[self.ddp.rank :: self.ddp.world]
        seq_len, batch = self.cfg.model.max_seq_len, self.cfg.train.batch_size
        for start in range(0, len(mine), batch):
            x, y = split_block(gather_blocks(self.val_tokens.tokens, mine[start : start + batch], seq_len))
            x, y = self._to_device(x), self._to_device(y)
            with autocast(self.device, self.cfg.train.dtype):
                logits = self.model(x)
            parts = parts + weighted_cross_entropy(logits, y, self.val_tables)
            if weighted:
                batch_stats = correction_stats(logits, y, self.val_tables.weight)
                stats = batch_stats if stats is None else stats + batch_stats
        self.model.train()
        parts = LossParts.from_vector(all_reduce_sum(parts.as_vector(), self.ddp))
        values = metrics_from_parts(parts)
        bits = math.log(2) * self.val_tokens.bytes_per_token
        values["bpb"] = values["loss_unweighted"] / bits
        if stats is not None:  # fitted on this rank's blocks (all of them without DDP)
            tau = fit_tau(stats)
            corrected = stats.loss(tau)
            self.correction = {"tau": tau, "step": self.step, "loss_raw": stats.loss(0.0), "loss_corrected": corrected}
            values |= {"tau": tau, "loss_corrected": corrected, "bpb_corrected": corrected / bits}
        return {"event": "val", "split": "val", "step": self.step, **values}

    # -- the loop --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signum

    def _should_stop(self) -> bool:
        flag = torch.tensor(float(self.stop_signal is not None))
        return bool(all_reduce_sum(flag, self.ddp).item() > 0)

    def run(self) -> TrainSummary:
        tc = self.cfg.train
        self.emit(self._start_event())
        previous = {s: signal.signal(s, self._on_signal) for s in SIGNAL_EXIT}
        started, window_start = time.perf_counter(), time.perf_counter()
        window = LossParts.zeros(self.device)
        last_train = last_val = None
        steps_this_run, window_steps = 0, 0
        try:
            while self.step < tc.max_steps:
                parts, grad_norm, ok = self._train_step() if steps_this_run else self._first_step()
                self.step += 1
                steps_this_run += 1
                if ok:
                    self.bad_steps, window, window_steps = 0, window + parts, window_steps + 1
                else:
                    self._on_bad_step()
                if self.step % tc.log_interval == 0 or self.step == tc.max_steps:
                    elapsed = time.perf_counter() - window_start
                    last_train = self._train_record(window, grad_norm, window_steps, elapsed, started)
                    self._log(last_train, self.health.check_train(last_train))
                    window, window_steps, window_start = LossParts.zeros(self.device), 0, time.perf_counter()
                if self.step % tc.eval_interval == 0 or self.step == tc.max_steps:
                    last_val = self.evaluate()
                    self._log(last_val, self.health.check_val(last_val))
                    if self.checkpoints.improves(last_val["loss_unweighted"]):
                        self.save(best=True)
                if self.checkpoints.due(self.step):
                    self.save()
                if self._should_stop() or (self.options.stop_after and steps_this_run >= self.options.stop_after):
                    break
            if not self.checkpoints.saved_at(self.step):
                self.save()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.metrics:
                self.metrics.close()
            if self.lock is not None:
                self.lock.release()
        checkpoint = self.checkpoints.last_saved
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            raise Interrupted(
                f"stopped by {name} at step {self.step}; checkpoint saved to {checkpoint}; continue with --resume auto",
                SIGNAL_EXIT[self.stop_signal],
            )
        summary = TrainSummary(
            step=self.step,
            max_steps=tc.max_steps,
            checkpoint=checkpoint,
            last_train=last_train,
            last_val=last_val,
            best_val_loss=self.checkpoints.best_val_loss,
            wall_time_s=time.perf_counter() - started,
            bad_steps=self.bad_steps,
            world=self.ddp.world,
            is_main=self.ddp.is_main,
            ddp_params_in_sync=self._params_in_sync() if self.ddp.enabled else None,
        )
        self.emit({"event": "end", "step": self.step, "checkpoint": str(checkpoint)})
        return summary

    def _params_in_sync(self) -> bool:
        """Every rank holds the same parameters: compare checksums with an all-reduce of max and min."""
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        positions = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device)
        checksum = torch.stack([flat.sum(), (flat * flat).sum(), (flat * positions).sum()])
        high, low = checksum.clone(), checksum.clone()
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        return bool(torch.equal(high, low))

    def _on_bad_step(self) -> None:
        self.bad_steps += 1
        self.emit(
            {"event": "warning", "step": self.step, "message": f"non-finite loss at step {self.step}: update skipped"}
        )
        if self.metrics:
            self.metrics.write(
                {"step": self.step, "event": "skipped", "reason": "non-finite loss", "bad_steps": self.bad_steps}
            )
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            last = self.checkpoints.last_good()
            raise TrainingHalted(
                f"{self.bad_steps} non-finite losses in a row at step {self.step}: stopped; last good checkpoint: "
                f"{last or 'none yet'}. Lower train.lr or use --dtype fp32, then --resume auto"
            )

    def _start_event(self) -> dict[str, Any]:
        tc = self.cfg.train
        return {
            "event": "start",
            "step": self.step,
            "max_steps": tc.max_steps,
            "parameters": self.model.num_parameters(),
            "expected_parameters": self.cfg.model.num_params(self.tokenizer.vocab_size),
            "device": str(self.device),
            "dtype": tc.dtype,
            "world": self.ddp.world,
            "train_tokens": len(self.train_tokens.tokens),
            "val_tokens": len(self.val_tokens.tokens),
            "tokens_per_step": self.tokens_per_step,
            "article_weight": tc.article_weight,
            "article_ids": self.articles.ids,
            "article_forms": [f.text for f in self.articles.forms if f.single_token],
            "out_dir": str(self.run_dir.path),
        }

    def _train_record(
        self, window: LossParts, grad_norm: torch.Tensor, steps: int, elapsed: float, started: float
    ) -> dict[str, Any]:
        tc = self.cfg.train
        values = metrics_from_parts(window) if steps else {}
        tokens_per_s = steps * self.tokens_per_step / max(elapsed, 1e-9)
        remaining = (tc.max_steps - self.step) * self.tokens_per_step / max(tokens_per_s, 1e-9)
        record = {
            "event": "train",
            "step": self.step,
            "max_steps": tc.max_steps,
            "epoch": round(self.sampler.epoch_progress, 4),
            **values,
            "tokens": self.step * self.tokens_per_step,
            "ratio_band": ratio_band(values.get("ratio"), tc.article_weight)[0],
            "lr": learning_rate(self.step - 1, tc),
            "grad_norm": float(grad_norm),
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * self.flops_per_token / self.ddp.world / self.peak_flops,
            "eta_s": remaining,
            "elapsed_s": time.perf_counter() - started,
            "bad_steps": self.bad_steps,
        }
        return record

    def _log(self, record: dict[str, Any], warnings: list[str]) -> None:
        if not self.ddp.is_main:
            return
        self.emit(record)
        assert self.metrics is not None
        self.metrics.write({k: v for k, v in record.items() if k != "event"})
        for message in warnings:
            self.emit({"event": "warning", "step": record["step"], "message": message})


def train(cfg: Config, options: RunOptions, emit: Emit = lambda event: None) -> TrainSummary:
    return Trainer(cfg, options, emit).run()
