"""The recipe sweep behind `tstool/presets/tiny.yaml`: many `tstool train` runs side by side on one GPU.

`make train` has a time budget on 2 CPU cores, so each setting gets the number of optimizer steps that
its shape, batch and optimizer fit into TRAIN_SECONDS there (CPU tokens/s measured per setting, below),
and the runs compare final validation bits per byte at equal CPU time. A GPU trains in the same
precision (fp32) as the CPU, only faster: 16 runs side by side on one NVIDIA H200 took 39-132 s each.

    PYTHONPATH=. python docs/sweeps/recipe_sweep.py first    # the base grid, then two adaptive rounds
    PYTHONPATH=. python docs/sweeps/recipe_sweep.py final    # the last round around the best setting

One JSON line per run is appended to $OUT/sweep.jsonl (docs/sweeps/sweep-*.jsonl are those files;
docs/sweeps/README.md summarises them). SWEEP_DEVICE=cpu SWEEP_PARALLEL=2 runs the jobs on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", "sweep-out"))
WORK = Path(os.environ.get("SWEEP_WORK", "/tmp/sweep"))
DEVICE = os.environ.get("SWEEP_DEVICE", "cuda")
TRAIN_SECONDS = 790.0  # `make train`'s training share of its 15 minutes, with room for evaluation and start-up
PARALLEL = int(os.environ.get("SWEEP_PARALLEL", "16"))
DEADLINE = time.time() + float(os.environ.get("SWEEP_DEADLINE", "420"))
EVAL_BLOCKS = 256
FFN = {128: 352, 160: 432, 192: 512, 224: 608}
# Training tokens/s on a 2-core AMD EPYC machine (2026-11-26), by (optimizer, d_model, layers, batch).
CPU_TOKENS_PER_S = {
    ("adamw", 160, 4, 16): 4500,
    ("adamw", 160, 4, 8): 5000,
    ("adamw", 160, 4, 4): 4565,
    ("adamw", 128, 4, 8): 5000,
    ("adamw", 128, 6, 8): 4350,
    ("adamw", 160, 6, 8): 3080,
    ("adamw", 192, 3, 8): 4500,
    ("adamw", 192, 4, 8): 3100,
    ("muon", 160, 4, 8): 4100,
    ("muon", 160, 4, 16): 4000,
}
BASE = {"opt": "adamw", "d": 160, "L": 4, "bs": 8, "lr": 4e-3, "min_ratio": 0.1, "wd": 0.2, "warmup": 100}
BASE |= {"beta2": 0.95, "mom": 0.95, "weight": 5.0, "seed": 1337}


def job(**changes: object) -> dict:
    spec = BASE | changes
    tokens = TRAIN_SECONDS * CPU_TOKENS_PER_S[spec["opt"], spec["d"], spec["L"], spec["bs"]]
    steps = int(tokens / (spec["bs"] * 256))
    name = "_".join(f"{key}{value:g}" if isinstance(value, float) else f"{key}{value}" for key, value in spec.items())
    sets = {
        "model.d_model": spec["d"],
        "model.n_layers": spec["L"],
        "model.ffn_hidden": FFN[spec["d"]],
        "train.batch_size": spec["bs"],
        "train.optimizer": spec["opt"],
        "train.lr": spec["lr"],
        "train.min_lr": spec["lr"] * spec["min_ratio"],
        "train.weight_decay": spec["wd"],
        "train.warmup_steps": spec["warmup"],
        "train.beta2": spec["beta2"],
        "train.muon_momentum": spec["mom"],
        "train.seed": spec["seed"],
        "train.eval_batches": EVAL_BLOCKS // spec["bs"],
        "train.eval_interval": steps // 2,
        "train.ckpt_interval": 10**6,
        "train.log_interval": 50,
        "train.threads": 1,
    }
    return {"name": name, "steps": steps, "spec": spec, "sets": sets}


def command(j: dict) -> list[str]:
    cmd = [sys.executable, "-m", "tstool", "train", "--config", "tiny", "--device", DEVICE, "--no-live"]
    cmd += ["--article-weight", str(j["spec"]["weight"]), "--max-steps", str(j["steps"])]
    cmd += ["--out-dir", str(WORK / j["name"]), "--overwrite"]
    for key, value in j["sets"].items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def result(j: dict, returncode: int, seconds: float) -> dict:
    metrics = WORK / j["name"] / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    vals = [line for line in lines if line.get("split") == "val"]
    return {
        "name": j["name"],
        "rc": returncode,
        "steps": j["steps"],
        "spec": j["spec"],
        "bpb": vals[-1]["bpb"] if vals else None,
        "val_loss": vals[-1]["loss_unweighted"] if vals else None,
        "curve": [(v["step"], round(v["bpb"], 4)) for v in vals],
        "wall_s": round(seconds, 1),
    }


def run_all(jobs: list[dict]) -> list[dict]:
    """Run the jobs, PARALLEL at a time, one thread each; stop starting new ones a minute before DEADLINE."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    pending, running, done = list(jobs), {}, []
    while pending or running:
        while pending and len(running) < PARALLEL and time.time() < DEADLINE - 60:
            j = pending.pop(0)
            log = open(WORK / "logs" / f"{j['name']}.log", "w")  # noqa: SIM115 - closed with the process
            process = subprocess.Popen(command(j), stdout=log, stderr=subprocess.STDOUT, env=env)
            running[j["name"]] = (j, process, time.time())
        if not running:
            break
        time.sleep(1)
        for name, (j, process, start) in list(running.items()):
            if process.poll() is None and time.time() > DEADLINE:
                process.kill()
            if process.poll() is not None:
                del running[name]
                done.append(result(j, process.returncode, time.time() - start))
                with open(OUT / "sweep.jsonl", "a") as out:
                    out.write(json.dumps(done[-1]) + "\n")
                print(f"{time.strftime('%X')} bpb {done[-1]['bpb']} {name} rc={process.returncode}", flush=True)
    return done


def ranked(done: list[dict]) -> list[dict]:
    finished = [r for r in done if r["bpb"] is not None and r["rc"] == 0 and r["spec"]["weight"] == 5.0]
    return sorted(finished, key=lambda r: r["bpb"])


def neighbours(spec: dict) -> list[dict]:
    out = [{"lr": spec["lr"] * 0.7}, {"lr": spec["lr"] * 1.4}, {"wd": spec["wd"] / 2}, {"wd": spec["wd"] * 1.5}]
    out += [{"warmup": 200}, {"beta2": 0.99}, {"min_ratio": 0.01}]
    if spec["opt"] == "muon":
        out += [{"mom": 0.9}, {"bs": 16 if spec["bs"] == 8 else 8}]
    return out


def adaptive_round(done: list[dict], top: int) -> list[dict]:
    """Neighbours of the `top` best settings so far that have not run yet."""
    seen, jobs = {r["name"] for r in done}, []
    for best in ranked(done)[:top]:
        for change in neighbours(best["spec"]):
            j = job(**(best["spec"] | change))
            if j["name"] not in seen | {x["name"] for x in jobs}:
                jobs.append(j)
    return jobs[:PARALLEL]


def first_rounds() -> list[dict]:
    muon = {"opt": "muon"}
    grid = [job(), job(beta2=0.99), job(lr=3e-3), job(lr=5e-3), job(min_ratio=0.01), job(d=128), job(d=192, L=3)]
    grid += [job(d=128, L=6), job(d=192, L=4), job(bs=16), job(weight=1.0), job(lr=8e-3, **muon)]
    grid += [job(lr=4e-3, **muon), job(lr=1.6e-2, **muon), job(bs=16, lr=8e-3, **muon), job(bs=16, lr=1.6e-2, **muon)]
    done = run_all(grid)
    done += run_all(adaptive_round(done, top=2))
    done += run_all(adaptive_round(done, top=1))
    if ranked(done):
        done += run_all([job(**(ranked(done)[0]["spec"] | {"weight": 1.0}))])
    return done


def final_round() -> list[dict]:
    best = {"opt": "muon", "lr": 8e-3, "beta2": 0.99, "mom": 0.9}
    changes = [{"mom": 0.85}, {"mom": 0.8}, {"beta2": 0.995}, {"beta2": 0.999}, {"mom": 0.85, "beta2": 0.999}]
    changes += [{"mom": 0.8, "beta2": 0.999}, {"lr": 1.1e-2}, {"mom": 0.85, "lr": 1.1e-2}, {"bs": 16}]
    changes += [{"mom": 0.85, "bs": 16}, {"seed": 1}, {"wd": 0.3}, {"warmup": 200}]
    changes += [{"mom": 0.85, "beta2": 0.995, "lr": 1.1e-2}, {"mom": 0.8, "beta2": 0.995}, {"mom": 0.75}]
    return run_all([job(**(best | change)) for change in changes])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    results = final_round() if sys.argv[1:] == ["final"] else first_rounds()
    for r in ranked(results):
        print(f"{r['bpb']:.4f} {r['name']} steps={r['steps']} curve={r['curve']}")
