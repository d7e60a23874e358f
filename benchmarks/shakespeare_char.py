"""Character-level Tiny Shakespeare through the whole pipeline: nanoGPT's baby GPT, then our recipe.

    python benchmarks/shakespeare_char.py [--quick] [--prepare] [--recipe nanogpt|ours ...]
        [--seeds 1337,1,2] [--split tail|hash] [--storage PATH] [--out PATH]

Two recipes, each run as `forja pretrain --config <recipe>` (collect -> clean -> dedup -> detox -> stats
-> tokenizer -> shards -> pretrain) in a fresh storage root, so nothing comes from an earlier run; the
second recipe reuses the data stages of the first, since both have the same corpus, tokenizer and shards
sections:

- configs/shakespeare-char-nanogpt.yaml: nanoGPT's published CPU settings (GPT-2 block, 4 layers, 4 heads,
  d_model 128, no bias, context 64, batch 12, 2000 iterations, lr 1e-3 -> 1e-4 with warmup 100 and cosine,
  betas (0.9, 0.99), weight decay 0.1, no dropout). nanoGPT reports a validation loss of 1.88; target:
  <= 1.90.
- configs/shakespeare-char.yaml: our recipe, with the same context, iterations, batch and about the same
  parameters; target: below 1.88.

Input: data/tinyshakespeare/input.txt cut at blank lines (between speeches) into documents of at least
100 lines, written as JSONL to the path the recipes collect (out/shakespeare-char/tinyshakespeare.jsonl).
Split `tail` (default) is nanoGPT's: the last 10 % of the text is the validation split. The stack holds
out documents by a hash of their id, so each document gets the first id of the form `tinyshakespeare/NNNN`,
`tinyshakespeare/NNNN.1`, `.2`, ... whose hash puts it on the wanted side. Split `hash` keeps the plain
ids: the documents the hash picks, spread over the play (written to a scratch folder).

The validation loss is over the whole validation split (every non-overlapping window of 64 characters),
in nats per character; with several seeds a recipe's result is their mean. Results go to
benchmarks/results/shakespeare_char.json (with date and machine); the exit status is 1 when a target is
missed. `--quick`: 200 iterations per recipe, a smoke run (no targets, no results file unless --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tasks.tokenizer.train import is_val  # noqa: E402

TEXT = REPO / "data" / "tinyshakespeare" / "input.txt"
OUT = REPO / "benchmarks" / "results" / "shakespeare_char.json"
RECIPES = {
    "nanogpt": REPO / "configs" / "shakespeare-char-nanogpt.yaml",
    "ours": REPO / "configs" / "shakespeare-char.yaml",
}
NANOGPT_VAL_LOSS = 1.88  # nanoGPT README, baby GPT on CPU after 2000 iterations
TARGETS = {"nanogpt": 1.90, "ours": NANOGPT_VAL_LOSS}
VAL_SHARE = 0.1
CHUNK_LINES = 100


# --- input -----------------------------------------------------------------------------------------


def chunk_text(text: str, lines: int = CHUNK_LINES) -> list[str]:
    """Consecutive pieces of at least `lines` lines, cut only at blank lines (between speeches).

    Joined with a blank line ("\\n\\n") they give back the text (without its final newline)."""
    speeches = text.rstrip("\n").split("\n\n")
    chunks, current, count = [], [], 0
    for speech in speeches:
        current.append(speech)
        count += speech.count("\n") + 2
        if count >= lines:
            chunks.append("\n\n".join(current))
            current, count = [], 0
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def document_id(index: int, val: bool, fraction: float) -> str:
    """The first id for document `index` that the stack's hash split puts on the `val` side."""
    base, salt = f"tinyshakespeare/{index:04d}", 0
    doc_id = base
    while is_val(doc_id, fraction) != val:
        salt += 1
        doc_id = f"{base}.{salt}"
    return doc_id


def make_documents(text: str, split: str, fraction: float = VAL_SHARE) -> list[dict]:
    chunks = chunk_text(text)
    assert "\n\n".join(chunks) == text.rstrip("\n"), "chunks must give back the text"
    starts, pos = [], 0
    for c in chunks:
        starts.append(pos)
        pos += len(c) + 2
    # The document boundary nearest to nanoGPT's cut (90 % of the characters) starts the validation split.
    cut = min(range(len(chunks)), key=lambda i: abs(starts[i] - (1 - fraction) * len(text)))
    docs = []
    for i, chunk in enumerate(chunks):
        doc_id = document_id(i, i >= cut, fraction) if split == "tail" else f"tinyshakespeare/{i:04d}"
        docs.append({"id": doc_id, "text": chunk, "metadata": {"lang": "en"}})
    return docs


def write_documents(docs: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp-write")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    tmp.replace(path)


def split_summary(docs: list[dict], fraction: float) -> dict:
    val = [d for d in docs if is_val(d["id"], fraction)]
    chars = sum(len(d["text"]) for d in docs)
    val_chars = sum(len(d["text"]) for d in val)
    first_val = next((i for i, d in enumerate(docs) if is_val(d["id"], fraction)), None)
    return {
        "documents": len(docs),
        "val_documents": len(val),
        "chars": chars,
        "val_chars": val_chars,
        "val_share": round(val_chars / chars, 4),
        "first_val_document": first_val,
        "val_is_tail": all(is_val(d["id"], fraction) for d in docs[first_val:]) if val else False,
    }


def collected_input(recipe: Path) -> Path:
    inputs = yaml.safe_load(recipe.read_text())["corpus"]["collect"]["inputs"]
    return REPO / inputs[0]


# --- runs ------------------------------------------------------------------------------------------


def run_recipe(name: str, storage: Path, data: Path, seed: int, quick: bool, log: Path) -> dict:
    """`forja pretrain --config <recipe>`; returns the pretrain manifest's numbers and the wall time."""
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "pretrain",
        "--config",
        str(RECIPES[name]),
        "--storage",
        str(storage),
        "--input",
        str(data),
        "--json",
        "--set",
        f"pretrain.seed={seed}",
    ]
    if quick:
        cmd += ["--set", "pretrain.max_steps=200", "--set", "pretrain.val_every=100"]
        cmd += ["--set", "pretrain.ckpt_every=100", "--set", "pretrain.val_windows=200"]
    env = {**os.environ, "FORJA_PROGRESS": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    started = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{name}: forja pretrain exited with {proc.returncode}\n{tail}")
    # The manifest is the last line; the training process prints its own summary before it.
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{"))
    manifest = json.loads(line)
    s = manifest["stats"]
    return {
        "recipe": str(RECIPES[name].relative_to(REPO)),
        "model": manifest["config"]["model"],
        "optim": manifest["config"]["optim"],
        "micro_batch": manifest["config"]["micro_batch"],
        "steps": s["steps"],
        "params": s["params"],
        "val_loss": s["val_loss"],
        "train_loss": s["train_loss"],
        "tokens_per_s": round(s["tokens_per_s"]) if s.get("tokens_per_s") else None,
        "pretrain_seconds": round(manifest["seconds"], 1),
        "command_seconds": round(seconds, 1),
        "evaluations": evaluations(s.get("evaluations", [])),
        "samples": s.get("samples", {}),
    }


def evaluations(rows: list[dict]) -> list[dict]:
    """Validation losses as logged (in-training ones at step k-1 after k steps), without the final
    validation when it repeats the last in-training one (same weights)."""
    out = [{"step": int(r["step"]), "val_loss": round(r["val/loss"], 4)} for r in rows]
    if len(out) > 1 and out[-1]["val_loss"] == out[-2]["val_loss"] and out[-1]["step"] == out[-2]["step"] + 1:
        out.pop()
    return out


def bare_reference(seed: int, steps: int) -> dict:
    """nanoGPT's own loop, for reference: the raw characters of input.txt (its first 90 % to train on, the
    rest to validate on, no documents, no end-of-text tokens), random windows, AdamW with decay on every
    matrix, warmup then cosine, clipping at 1.0, on our Decoder with the nanogpt recipe's settings. The
    validation loss is measured as the pipeline measures it: every non-overlapping window of the split."""
    import math

    import numpy as np
    import torch

    from models.model import Decoder, ModelConfig

    recipe = yaml.safe_load(RECIPES["nanogpt"].read_text())["pretrain"]
    opt_cfg, batch = recipe["optim"], recipe["micro_batch"]
    text = TEXT.read_text(encoding="utf-8")
    chars = sorted(set(text))
    ids = torch.from_numpy(np.array([chars.index(c) for c in text], dtype=np.int64))
    cut = int(len(ids) * (1 - VAL_SHARE))
    train, val = ids[:cut], ids[cut:]
    torch.manual_seed(seed)
    model = Decoder(ModelConfig(**recipe["model"], vocab_size=len(chars)))
    ctx = model.cfg.context
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": matrices, "weight_decay": opt_cfg["weight_decay"]},
            {"params": others, "weight_decay": 0.0},
        ],
        lr=opt_cfg["lr"],
        betas=(opt_cfg["beta1"], opt_cfg["beta2"]),
    )
    lr, min_lr, warmup = opt_cfg["lr"], opt_cfg["min_lr"], opt_cfg["warmup_steps"]

    def lr_at(it: int) -> float:
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = min(1.0, (it - warmup) / (steps - warmup))
        return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)

    rng = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for it in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(it)
        starts = torch.randint(len(train) - ctx, (batch,), generator=rng)
        x = torch.stack([train[i : i + ctx] for i in starts])
        y = torch.stack([train[i + 1 : i + ctx + 1] for i in starts])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - started
    model.eval()
    windows = (len(val) - 1) // ctx
    total = 0.0
    with torch.no_grad():
        for b in range(0, windows, 256):
            rows = range(b, min(b + 256, windows))
            x = torch.stack([val[i * ctx : (i + 1) * ctx] for i in rows])
            y = torch.stack([val[i * ctx + 1 : (i + 1) * ctx + 1] for i in rows])
            total += model(x, y)[1].item() * y.numel()
    return {"val_loss": total / (windows * ctx), "train_loss": loss.item(), "seconds": round(seconds, 1)}


def machine() -> dict:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 iterations per recipe (smoke run)")
    parser.add_argument("--prepare", action="store_true", help="only write the input file and stop")
    parser.add_argument("--recipe", choices=sorted(RECIPES), action="append", help="default: both")
    parser.add_argument("--split", choices=["tail", "hash"], default="tail")
    parser.add_argument(
        "--seeds",
        default="1337",
        help="comma-separated training seeds per recipe (default: the recipes' 1337)",
    )
    parser.add_argument("--storage", type=Path, help="storage root to use and keep (default: a temp one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.seeds = [int(x) for x in args.seeds.split(",")]

    data = collected_input(RECIPES["nanogpt"])
    docs = make_documents(TEXT.read_text(encoding="utf-8"), args.split)
    split = {"kind": args.split, **split_summary(docs, VAL_SHARE)}
    scratch = None
    if args.split == "tail" or args.prepare:
        write_documents(docs, data)
    else:  # the recipes' input stays nanoGPT's split
        scratch = Path(tempfile.mkdtemp(prefix="shakespeare-hash-"))
        data = scratch / "tinyshakespeare.jsonl"
        write_documents(docs, data)
    shown = data.relative_to(REPO) if data.is_relative_to(REPO) else data
    print(
        f"input: {split['documents']} documents -> {shown}"
        f"; validation: {split['val_documents']} documents, {split['val_chars']:,} characters "
        f"({split['val_share']:.1%}), {'the last ones' if split['val_is_tail'] else 'spread over the text'}"
    )
    if args.prepare:
        return 0

    storage = args.storage or Path(tempfile.mkdtemp(prefix="shakespeare-store-"))
    runs: dict[str, dict] = {}
    try:
        for name in args.recipe or ["nanogpt", "ours"]:
            runs[name] = {"recipe": str(RECIPES[name].relative_to(REPO)), "seeds": {}}
            for seed in args.seeds:
                print(f"{name}: forja pretrain --config {runs[name]['recipe']} (seed {seed})", flush=True)
                log = Path(tempfile.gettempdir()) / f"shakespeare-{name}-{seed}.log"
                runs[name]["seeds"][str(seed)] = r = run_recipe(name, storage, data, seed, args.quick, log)
                curve = "  ".join(f"{e['step']}: {e['val_loss']:.3f}" for e in r["evaluations"])
                print(
                    f"  val loss {r['val_loss']:.4f} (train {r['train_loss']:.4f}) after {r['steps']} steps, "
                    f"{r['params']:,} parameters, {r['tokens_per_s'] or 0:,} tokens/s, "
                    f"{r['pretrain_seconds']:.0f} s training ({r['command_seconds']:.0f} s in all)\n"
                    f"  validation: {curve}",
                    flush=True,
                )
    finally:
        if not args.storage:
            shutil.rmtree(storage, ignore_errors=True)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    reference = None
    if "nanogpt" in runs:
        steps = 200 if args.quick else yaml.safe_load(RECIPES["nanogpt"].read_text())["pretrain"]["max_steps"]
        print(f"reference: nanoGPT's loop on the raw characters, {steps} steps", flush=True)
        reference = {"seeds": {str(seed): bare_reference(seed, steps) for seed in args.seeds}}
        losses = [r["val_loss"] for r in reference["seeds"].values()]
        reference["val_loss"] = round(sum(losses) / len(losses), 4)

    print(f"\n{'recipe':10s} {'val loss':>9s}  {'seeds':24s} {'target':8s} result")
    for name, run in runs.items():
        losses = [r["val_loss"] for r in run["seeds"].values()]
        run["val_loss"] = round(sum(losses) / len(losses), 4)
        target = TARGETS[name]
        ok = run["val_loss"] <= target if name == "nanogpt" else run["val_loss"] < target
        run["target"] = f"{'<=' if name == 'nanogpt' else '<'} {target}"
        run["result"] = "-" if args.quick else ("PASS" if ok else "FAIL")
        each = ", ".join(f"{x:.4f}" for x in losses)
        print(f"{name:10s} {run['val_loss']:9.4f}  {each:24s} {run['target']:8s} {run['result']}")
    if reference:
        each = ", ".join(f"{r['val_loss']:.4f}" for r in reference["seeds"].values())
        gap = runs["nanogpt"]["val_loss"] - reference["val_loss"]
        print(f"{'bare loop':10s} {reference['val_loss']:9.4f}  {each:24s} (nanogpt minus bare: {gap:+.4f})")

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "reference": {"nanogpt_val_loss": NANOGPT_VAL_LOSS, "source": "nanoGPT README, baby GPT on CPU"},
        "split": split,
        "runs": runs,
        "bare_reference": reference,
    }
    if not args.quick or args.out != OUT:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"results: {args.out}")
    return 1 if any(r["result"] == "FAIL" for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
