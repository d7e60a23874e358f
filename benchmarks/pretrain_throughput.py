"""Pretraining throughput: our Lightning training against a bare PyTorch loop, and MFU on a GPU.

    python benchmarks/pretrain_throughput.py [--quick] [--preset tiny|shakespeare-char ...] [--steps N]
        [--warmup N] [--repeats N] [--no-profile] [--max-wait S] [--out PATH]
        [--gpu-batch N] [--gpu-steps N] [--gpu-compile] [--peak-flops F]

1. CPU, fp32, per recipe (configs/tiny.yaml and configs/shakespeare-char-nanogpt.yaml: their model,
   optimizer and micro batch): tokens/s of the Trainer `models.train.build` returns (LitDecoder +
   TokenData) against a bare loop over the same `Decoder`: same initial weights (same seed), same batches
   (the same RandomWindows samples through a DataLoader with the same StepSampler), AdamW on
   `model.param_groups` with the same betas, eps and decay, the same warmup + cosine LambdaLR,
   clip_grad_norm_ at the same value, zero_grad(set_to_none=True). torch.use_deterministic_algorithms is
   on for both, as the Trainer's deterministic=True sets it. Every run must give the same loss at every
   step (checked).

   The Trainer is used exactly as `build` returns it, with validation and checkpoints moved past the
   last step and no export: precision 32-true; CSV + TensorBoard loggers written every 10 steps
   (log_every_n_steps); `train/loss` (also on the progress bar) and `train/lr` logged on those steps only;
   the Throughput callback (tokens/s over the steps since its last write, on those steps only);
   the training bar (FORJA_PROGRESS=1, the default: Lightning's Rich bar, updated at most every 0.1 s;
   its output goes to a scratch file here, as it does under a Prefect worker, not a terminal); the
   ProgressFile callback (every 10 steps); ModelCheckpoint attached (no save falls in the run);
   gradient_clip_val; deterministic=True.

   Pairing: right after each Lightning optimizer step a callback runs one step of a bare-loop twin (its
   own model, optimizer and DataLoader) in the same process. A Lightning step is timed from the end of
   the twin's step to the end of the next Lightning step, so it holds everything the Trainer does per
   step (data, hooks, logging, progress bar, scheduler); the twin's step is timed on its own. Steps are
   summed in blocks of 10 (each block holds exactly one of the steps on which the loggers write); the
   first --warmup steps of each run are left out. Lightning / bare = the median over all blocks of all
   repeats of twin time / Lightning time. Adjacent blocks see the same load from other programs, so the
   ratio holds on a shared machine. Each repeat also runs the bare loop alone (no Trainer in the process)
   to show that the twin runs at its speed. Target: >= 0.97.

   Unless --no-profile, more Lightning runs, each with its own paired twin:
   - -progress_bar, -loggers, -throughput_cb, -self_log: the Trainer as built with its extras taken away
     cumulatively, in this order, to show where the difference goes.

2. GPU, only where CUDA is available: GPT-2 124M (12 layers, 12 heads, d_model 768, context 1024,
   vocab 50304), bf16-mixed, batch --gpu-batch, through the same `build` (as built, progress bar and
   all) and then the bare loop under torch.autocast(bfloat16): tokens/s and MFU = tokens/s x
   Decoder.flops_per_token(1024) / the GPU's dense bf16 peak (a table by device name, or --peak-flops).
   Without CUDA the script says that MFU was not measured.

Input: token shards of random ids in the shards stage's format (index.json, train/ and val/ .bin), in a
scratch folder; the tokens' values do not change the work of a step. Results go to
benchmarks/results/pretrain_throughput.json with the date and the machine; the exit status is 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import tempfile
import time
import types
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from models.data import RandomWindows, ShardSet, StepSampler  # noqa: E402
from models.lightning import OptimConfig, Throughput  # noqa: E402
from models.model import Decoder, ModelConfig  # noqa: E402
from models.train import TrainSpec, build  # noqa: E402
from tasks.config import load_config  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "pretrain_throughput.json"
TARGET = 0.97
BLOCK = 10  # steps per timed block: log_every_n_steps of the Trainer build() makes
# Recipes measured on CPU: the model, optimizer and batch of the recipe's pretrain section.
PRESETS = {
    "tiny": (REPO / "configs" / "tiny.yaml", None),
    # the recipe's char-level tokenizer has 69 pieces (64 characters, newline, 4 specials)
    "shakespeare-char": (REPO / "configs" / "shakespeare-char-nanogpt.yaml", 69),
}
GPT2_124M = {
    "arch": "gpt2",
    "n_layer": 12,
    "n_head": 12,
    "d_model": 768,
    "context": 1024,
    "vocab_size": 50304,
    "dropout": 0.0,
}
# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, from the vendors' datasheets. First match wins, so
# more specific names come first.
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200 NVL", 836e12),
    ("H200", 989e12),  # also GH200
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
]


# --- input -----------------------------------------------------------------------------------------


def token_shards(folder: Path, vocab: int, train_tokens: int, val_tokens: int, seed: int = 0) -> Path:
    """Random token ids in the shards stage's format (uint16, one file per split, index.json)."""
    rng = np.random.default_rng(seed)
    shards = []
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        rng.integers(4, vocab, size=n, dtype=np.uint16).tofile(folder / split / "00000.bin")
        shards.append(
            {"path": f"{split}/00000.bin", "split": split, "documents": 1, "tokens": n, "bytes": 4 * n}
        )
    totals = {s["split"]: {k: s[k] for k in ("documents", "tokens", "bytes")} for s in shards}
    index = {"dtype": "uint16", "vocab_size": vocab, "eos_id": 2, "shards": shards, "totals": totals}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def preset_spec(name: str, shards: Path, out: Path, steps: int) -> TrainSpec:
    """The recipe's pretrain section as models.train would get it, with no checkpoint or validation
    inside the `steps` measured and no export."""
    recipe, vocab = PRESETS[name]
    cfg = load_config(recipe)
    model = {**cfg.pretrain.model, "vocab_size": vocab or cfg.tokenizer.vocab_size}
    p = cfg.pretrain
    return TrainSpec(
        shards_dir=str(shards),
        out_dir=str(out),
        model=model,
        optim=dict(p.optim),
        micro_batch=p.micro_batch,
        accumulate=p.accumulate,
        max_steps=steps,
        val_every=10 * steps,
        val_windows=p.val_windows,
        ckpt_every=10 * steps,
        seed=p.seed,
        accelerator="cpu",
        precision=p.precision,
        export=False,
    )


# --- measuring -------------------------------------------------------------------------------------


class BareLoop:
    """The training of `spec` as a plain loop: no Trainer, no hooks, no logging."""

    def __init__(self, spec: TrainSpec, cuda: bool = False, compile_model: bool = False):
        torch.manual_seed(spec.seed)  # build() seeds with seed_everything(spec.seed), then makes the model
        self.spec, self.cfg = spec, ModelConfig(**spec.model)
        self.device = torch.device("cuda" if cuda else "cpu")
        self.model = Decoder(self.cfg).to(self.device)
        o = OptimConfig(**{**spec.optim, "max_steps": spec.max_steps})  # what build() passes to LitDecoder
        self.opt, self.sched = o.adamw(self.model.param_groups(o.weight_decay, o.decay_embeddings))
        self.forward = torch.compile(self.model) if compile_model else self.model
        data = RandomWindows(ShardSet.open(spec.shards_dir, "train"), self.cfg.context, spec.seed)
        sampler = StepSampler(spec.micro_batch, spec.accumulate, 0, 1, start_step=lambda: 0)
        self.batches = iter(DataLoader(data, batch_size=spec.micro_batch, sampler=sampler))
        bf16 = cuda and spec.precision == "bf16-mixed"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        self.model.train()

    def step(self) -> torch.Tensor:
        spec = self.spec
        for _ in range(spec.accumulate):
            x, y = next(self.batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast:
                _, loss = self.forward(x, y)
            (loss / spec.accumulate).backward()
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), spec.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


class Clock:
    """Wall and CPU seconds of each step, and its loss."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.losses: list[torch.Tensor] = []

    @staticmethod
    def now(cuda: bool) -> tuple[float, float]:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def add(self, since: tuple[float, float], until: tuple[float, float], loss: torch.Tensor) -> None:
        self.wall.append(until[0] - since[0])
        self.cpu.append(until[1] - since[1])
        self.losses.append(loss.detach())


class PairedSteps(L.Callback):
    """Times the Trainer's optimizer steps and, right after each one, runs and times one step of a
    BareLoop twin. A Lightning step is measured from the end of the twin's step to the end of the next
    Lightning step, so it holds everything the Trainer does per step (data, hooks, logging, progress bar);
    the twin's step is measured from the end of the Lightning step to its own end. Adjacent steps see the
    same load from other programs, so their ratio stays meaningful on a busy machine."""

    def __init__(self, twin: BareLoop | None, cuda: bool = False):
        self.twin, self.cuda = twin, cuda
        self.lightning, self.bare = Clock(cuda), Clock(cuda)
        self._last: tuple[float, float] | None = None

    def on_train_start(self, trainer, pl_module):
        self._last = Clock.now(self.cuda)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        t = Clock.now(self.cuda)
        self.lightning.add(self._last, t, outputs["loss"])
        self._last = t
        if self.twin is not None:
            loss = self.twin.step()
            self._last = Clock.now(self.cuda)
            self.bare.add(t, self._last, loss)


def steady(clock: Clock, warmup: int) -> dict:
    """Steady-state time per block of BLOCK consecutive steps (the first `warmup` steps left out), and
    all losses. A block holds exactly one of the steps on which the loggers write (log_every_n_steps)."""
    wall, cpu = clock.wall[warmup:], clock.cpu[warmup:]
    n = len(wall) // BLOCK * BLOCK
    return {
        "wall": [sum(wall[i : i + BLOCK]) for i in range(0, n, BLOCK)],
        "cpu": [sum(cpu[i : i + BLOCK]) for i in range(0, n, BLOCK)],
        "losses": [float(x) for x in clock.losses],
    }


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (progress bar, Lightning's notices) to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def quiet_training_step(self, batch, batch_idx):
    """LitDecoder.training_step without its two self.log calls."""
    x, y = batch
    _, loss = self.model(x, y)
    return loss


# Lightning runs: "lightning" is the Trainer as `build` returns it; the others take extras away from it,
# cumulatively, in this order.
STRIP = ["progress_bar", "loggers", "throughput_callback", "self_log"]
VARIANTS = {
    "lightning": [],
    "-progress_bar": STRIP[:1],
    "-loggers": STRIP[:2],
    "-throughput_cb": STRIP[:3],
    "-self_log": STRIP[:4],
}


def run_lightning(
    spec: TrainSpec, warmup: int, strip: list[str], log: Path, twin: bool = True, cuda: bool = False
) -> dict[str, dict]:
    """One fit of the Trainer `build` returns (less what `strip` names), with a paired bare twin."""
    os.environ["FORJA_PROGRESS"] = "0" if "progress_bar" in strip else "1"
    with output_to(log):
        trainer, module, data = build(spec)
        pairs = PairedSteps(BareLoop(spec, cuda) if twin else None, cuda)
        trainer.callbacks.append(pairs)
        if "loggers" in strip:
            trainer.loggers = []
        if "throughput_callback" in strip:
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, Throughput)]
        if "self_log" in strip:
            module.training_step = types.MethodType(quiet_training_step, module)
        trainer.fit(module, datamodule=data)
    out = {"lightning": steady(pairs.lightning, warmup)}
    if twin:
        out["bare"] = steady(pairs.bare, warmup)
    return out


def run_bare(spec: TrainSpec, warmup: int, cuda: bool = False, compile_model: bool = False) -> dict:
    """The bare loop on its own (no Trainer in the process's way)."""
    loop, clock = BareLoop(spec, cuda, compile_model), Clock(cuda)
    last = Clock.now(cuda)
    for _ in range(spec.max_steps):
        loss = loop.step()
        t = Clock.now(cuda)
        clock.add(last, t, loss)
        last = t
    return steady(clock, warmup)


class OtherLoad:
    """Share of all cores that other programs used while a block ran (their time slows wall clocks)."""

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    @staticmethod
    def _mine() -> float:
        t = psutil.Process().cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self):
        self._b, self._w, self._c = self._busy(), time.perf_counter(), self._mine()
        return self

    def __exit__(self, *exc):
        busy, mine = self._busy() - self._b, self._mine() - self._c
        wall = time.perf_counter() - self._w
        self.share = max(0.0, busy - mine) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


class QuietWait:
    """Before a timed run: wait until other programs use less than `threshold` of the cores, spending at
    most `budget_s` seconds on waiting over the whole benchmark."""

    def __init__(self, budget_s: float, threshold: float = 0.25):
        self.left, self.threshold, self.waited = budget_s, threshold, 0.0

    def __call__(self) -> None:
        while self.left > 0:
            with OtherLoad() as load:
                time.sleep(0.5)
            if load.share < self.threshold:
                return
            time.sleep(1.0)
            self.left -= 1.5
            self.waited += 1.5


def median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def measure_preset(name: str, args: argparse.Namespace, work: Path, wait: QuietWait) -> dict:
    shards = token_shards(work / f"shards-{name}", PRESETS[name][1] or 4096, 2_000_000, 50_000)
    spec = preset_spec(name, shards, work / f"run-{name}", args.warmup + args.steps)
    variants = ["lightning"] + ([v for v in VARIANTS if v != "lightning"] if args.profile else [])
    runs_order = ["bare-alone", *variants]
    log = work / "lightning-output.log"
    tokens_per_step = spec.micro_batch * spec.accumulate * spec.model["context"]
    per_block = tokens_per_step * BLOCK
    cfg = ModelConfig(**spec.model)
    params = Decoder(cfg).num_params()
    print(
        f"\n[{name}] {cfg.arch}, {cfg.n_layer} layers, d_model {cfg.d_model}, context {cfg.context}, "
        f"vocab {cfg.vocab_size}, batch {spec.micro_batch} ({tokens_per_step} tokens/step), {params:,} "
        f"parameters; {args.repeats} repeats of {args.warmup} + {args.steps} steps; torch threads "
        f"{torch.get_num_threads()}",
        flush=True,
    )
    # pairs[v]: (lightning, twin) seconds per block, all repeats; alone: the bare loop's runs on its own
    pairs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    cpu_pairs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    alone: list[dict] = []
    losses: list[list[float]] = []
    others = []
    for r in range(args.repeats):
        for v in runs_order[r % len(runs_order) :] + runs_order[: r % len(runs_order)]:
            spec.out_dir = str(work / f"run-{name}-{v}-{r}")
            wait()
            with OtherLoad() as load:
                if v == "bare-alone":
                    res = run_bare(spec, args.warmup)
                    alone.append(res)
                    losses.append(res["losses"])
                else:
                    res = run_lightning(spec, args.warmup, VARIANTS[v], log)
                    light, bare = res["lightning"], res["bare"]
                    pairs[v] += list(zip(light["wall"], bare["wall"], strict=True))
                    cpu_pairs[v] += list(zip(light["cpu"], bare["cpu"], strict=True))
                    losses += [light["losses"], bare["losses"]]
            others.append(load.share)
            if v == "bare-alone":
                line = f"{per_block / median(res['wall']):8,.0f} tokens/s"
            else:
                lw, bw = median(light["wall"]), median(bare["wall"])
                line = f"{per_block / lw:8,.0f} tokens/s, its bare twin {per_block / bw:8,.0f}: {bw / lw:.3f}"
            print(f"  repeat {r + 1} {v:15s} {line}  [other programs: {load.share:.0%}]", flush=True)

    # The same computation everywhere: every run's losses must equal the bare loop's, step for step.
    ref = losses[0]
    loss_diff = max(abs(a - b) for run in losses for a, b in zip(ref, run, strict=True))
    out = {
        "recipe": str(PRESETS[name][0].relative_to(REPO)),
        "model": spec.model,
        "micro_batch": spec.micro_batch,
        "tokens_per_step": tokens_per_step,
        "params": params,
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "max_loss_difference": loss_diff,
        "others_share_max": round(max(others), 3),
        "others_share_median": round(median(others), 3),
        "bare_alone": {
            "tokens_per_s_best": round(max(per_block / median(a["wall"]) for a in alone), 1),
            "tokens_per_s_runs": [round(per_block / median(a["wall"]), 1) for a in alone],
        },
        "variants": {},
    }
    print(
        f"  {'':15s} {'tokens/s':>9s} {'ms/step':>8s} {'twin ms':>8s} {'ratio':>7s} {'cpu ratio':>9s} "
        f"{'overhead':>9s}"
    )
    for v in variants:
        light = [p[0] for p in pairs[v]]
        bare = [p[1] for p in pairs[v]]
        ratio = median([b / lt for lt, b in pairs[v]])
        cpu_ratio = median([b / lt for lt, b in cpu_pairs[v] if lt > 0])
        overhead = median([lt - b for lt, b in pairs[v]])
        out["variants"][v] = {
            "changes": VARIANTS[v],
            "tokens_per_s": round(per_block / median(light), 1),
            "step_ms": round(1000 * median(light) / BLOCK, 3),
            "twin_step_ms": round(1000 * median(bare) / BLOCK, 3),
            "ratio_vs_bare": round(ratio, 4),
            "ratio_of_medians": round(median(bare) / median(light), 4),
            "cpu_ratio_vs_bare": round(cpu_ratio, 4),
            "overhead_ms_per_step": round(1000 * overhead / BLOCK, 3),
            "blocks": len(pairs[v]),
        }
        print(
            f"  {v:15s} {per_block / median(light):9,.0f} {1000 * median(light) / BLOCK:8.2f} "
            f"{1000 * median(bare) / BLOCK:8.2f} {ratio:7.3f} {cpu_ratio:9.3f} "
            f"{1000 * overhead / BLOCK:7.2f}ms"
        )
    print(
        f"  bare loop alone: best {out['bare_alone']['tokens_per_s_best']:,.0f} tokens/s; losses: largest "
        f"difference between any two runs, any step: {loss_diff:.2e}"
    )
    out["ratio"] = out["variants"]["lightning"]["ratio_vs_bare"]
    return out


# --- GPU -------------------------------------------------------------------------------------------


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16:
        if key.lower() in device_name.lower():
            return flops
    return None


def measure_gpu(args: argparse.Namespace, work: Path) -> dict:
    name = torch.cuda.get_device_name(0)
    peak = args.peak_flops or peak_flops(name)
    shards = token_shards(work / "shards-gpt2", GPT2_124M["vocab_size"], 20_000_000, 200_000)
    warmup, steps = args.gpu_warmup, -(-args.gpu_steps // BLOCK) * BLOCK
    spec = TrainSpec(
        shards_dir=str(shards),
        out_dir=str(work / "run-gpu"),
        model=dict(GPT2_124M),
        optim={"lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 10, "weight_decay": 0.1},
        micro_batch=args.gpu_batch,
        max_steps=warmup + steps,
        val_every=10 * (warmup + steps),
        ckpt_every=10 * (warmup + steps),
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        compile=args.gpu_compile,
        peak_flops=peak,
        export=False,
    )
    flops_per_token = Decoder(ModelConfig(**GPT2_124M)).flops_per_token(GPT2_124M["context"])
    print(
        f"\n[gpu] {name}: GPT-2 124M, bf16-mixed, batch {spec.micro_batch} x {GPT2_124M['context']}, "
        f"{flops_per_token / 1e9:.3f} GFLOP/token, peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s"
        f"{' (torch.compile)' if args.gpu_compile else ''}",
        flush=True,
    )
    out = {
        "device": name,
        "peak_flops": peak,
        "flops_per_token": flops_per_token,
        "micro_batch": spec.micro_batch,
    }
    out["compile"] = args.gpu_compile
    log = work / "lightning-output.log"
    tokens_per_step = spec.micro_batch * GPT2_124M["context"]
    for side in ("lightning", "bare"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if side == "lightning":  # the Trainer as built, progress bar and all
            res = run_lightning(spec, warmup, [], log, twin=False, cuda=True)["lightning"]
        else:
            res = run_bare(spec, warmup, cuda=True, compile_model=args.gpu_compile)
        step = median(res["wall"]) / BLOCK
        tps = tokens_per_step / step
        mfu = tps * flops_per_token / peak if peak else None
        out[side] = {
            "tokens_per_s": round(tps, 1),
            "median_step_ms": round(1000 * step, 2),
            "mfu": round(mfu, 4) if mfu is not None else None,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "final_loss": res["losses"][-1],
        }
        print(
            f"  {side:9s} {tps:10,.0f} tokens/s, {1000 * step:.1f} ms/step, "
            + (f"MFU {mfu:.1%}" if mfu is not None else "MFU unknown: pass --peak-flops for this GPU"),
            flush=True,
        )
    out["ratio"] = round(out["lightning"]["tokens_per_s"] / out["bare"]["tokens_per_s"], 4)
    return out


# --- main ------------------------------------------------------------------------------------------


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append", help="default: all")
    parser.add_argument("--steps", type=int, help="measured steps per run (default 60, quick 20)")
    parser.add_argument(
        "--warmup", type=int, help="steps left out at the start of a run (default 10, quick 5)"
    )
    parser.add_argument("--repeats", type=int, help="runs per side (default 5, quick 2)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="only bare vs Lightning")
    parser.add_argument(
        "--max-wait", type=float, default=120, help="seconds, in all, to wait for a quiet machine (0: never)"
    )
    parser.add_argument("--gpu-batch", type=int, default=16)
    parser.add_argument("--gpu-steps", type=int, default=50)
    parser.add_argument("--gpu-warmup", type=int, default=10)
    parser.add_argument("--gpu-compile", action="store_true", help="torch.compile the model on the GPU")
    parser.add_argument("--peak-flops", type=float, help="the GPU's peak bf16 FLOP/s, if not in the table")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.steps = -(-(args.steps or (20 if args.quick else 60)) // BLOCK) * BLOCK  # whole blocks
    args.warmup = args.warmup if args.warmup is not None else (5 if args.quick else 10)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first step builds the optimizer state")

    torch.use_deterministic_algorithms(True)  # what build()'s Trainer(deterministic=True) turns on
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "target": f"lightning / bare tokens/s >= {TARGET}",
        "cpu": {},
    }
    started = time.perf_counter()
    wait = QuietWait(args.max_wait)
    with tempfile.TemporaryDirectory(prefix="pretrain-throughput-") as tmp:
        work = Path(tmp)
        for name in args.preset or list(PRESETS):
            result["cpu"][name] = measure_preset(name, args, work, wait)
        if torch.cuda.is_available():
            result["gpu"] = measure_gpu(args, work)
        else:
            result["gpu"] = None
            print(
                "\n[gpu] no CUDA device: MFU was not measured (GPT-2 124M, bf16-mixed, runs where CUDA is)."
            )
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["waited_for_quiet_s"] = wait.waited

    print(f"\n{'check':42s} {'measured':>9s}  {'target':8s} result")
    failed = False
    for name, r in result["cpu"].items():
        ok = r["ratio"] >= TARGET
        failed |= not ok
        r["result"] = "PASS" if ok else "FAIL"
        print(f"{'lightning / bare tokens/s, ' + name:42s} {r['ratio']:9.3f}  >= {TARGET:<5} {r['result']}")
    if not args.quick or args.out != OUT:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
