"""Token shard throughput: the shard stage against bare SentencePiece, and with two processes against one.

  python benchmarks/tokenize_throughput.py [--quick] [--mb N] [--repeats N] [--max-wait S] [--out F] [--keep]

Two measurements, each a ratio against a reference measured in the same run on the same machine:

1. Stage vs bare encoder: MB/s of text through `tokenize_corpus` (ShardReader -> TokenizeToShards through
   the datatrove executor, tasks=1, workers=1, a fresh storage root each run so nothing is reused) against
   `sp.encode(batch)` over the same documents in batches of the same size, in this process. The bare side
   starts with every text already in memory: it excludes reading and decompressing the shards, writing
   token files, the executor and the manifest, all of which the stage pays. Both sides encode on one
   thread, as each stage worker does (processes, not threads, give the stage its parallelism).
   Target: stage / bare >= 0.9.
2. Scaling: wall time of the stage with tasks=1, workers=1 against tasks=2, workers=2.
   Target: >= 1.8x on 2 cores. The worker pool's fork server starts once per process and then forks
   workers with the step modules already imported (see tasks/dt.py); the first two-worker repeat pays
   that start (~0.5 s), as the first data stage of a `forja run` does, and the later ones do not.

Each side is run --repeats times, alternated; the best time counts. A breakdown (one process, no executor)
says where the stage's time goes: reading the shards, encoding, and the rest of TokenizeToShards.

Input: the bundled sample (data/sample), collected, then copied with its sentences shuffled within each
paragraph and a new id for every copy, until the corpus holds --mb MB of text (default 64; quick 3). It is
written as gzipped JSONL corpus shards (8 files) and described by a stats manifest made here. The tokenizer
(BPE, 4096 pieces, configs/tiny.yaml) is trained on the collected sample.

Results go to benchmarks/results/tokenize_throughput.json (with date and machine). The exit status is 1
when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import sentencepiece as spm  # noqa: E402
from datatrove.data import Document  # noqa: E402
from machine_load import ProcessTree, scratch  # noqa: E402 - next to this script

from tasks.config import ShardsConfig, TokenizerConfig, load_config  # noqa: E402
from tasks.corpus.collect import collect  # noqa: E402
from tasks.corpus.shards import ShardReader, iter_records, shard_writer  # noqa: E402
from tasks.manifest import Manifest  # noqa: E402
from tasks.storage import Storage  # noqa: E402
from tasks.tokenizer.shards import TokenizeToShards, tokenize_corpus  # noqa: E402
from tasks.tokenizer.train import train_tokenizer  # noqa: E402

SAMPLE = REPO / "data" / "sample"
RECIPE = REPO / "configs" / "tiny.yaml"
OUT = REPO / "benchmarks" / "results" / "tokenize_throughput.json"
SEED = 20240612
CORPUS_FILES = 8  # gzipped JSONL shards of the synthetic corpus: work for every task count up to 8
BATCH_DOCS = ShardsConfig().batch_docs
MB = 1_000_000

TARGETS = {"stage_vs_bare": (">=", 0.9), "speedup_2_workers": (">=", 1.8)}


# --- input -----------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def perturb(text: str, rng: random.Random) -> str:
    """The same paragraphs with their sentences in another order (same length, same language)."""
    lines = []
    for line in text.split("\n"):
        sentences = [s for s in _SENTENCE_END.split(line) if s]
        rng.shuffle(sentences)
        lines.append(" ".join(sentences))
    return "\n".join(lines)


def synthetic_docs(records: list[dict], target_bytes: int, seed: int) -> list[Document]:
    """The sample's documents, then perturbed copies of them with new ids, up to `target_bytes` of text."""
    rng = random.Random(seed)
    docs, total, copy = [], 0, 0
    while total < target_bytes:
        for rec in records:
            text = rec["text"] if copy == 0 else perturb(rec["text"], rng)
            doc_id = rec["id"] if copy == 0 else f"{rec['id']}~{copy:04d}"
            docs.append(Document(text=text, id=doc_id, metadata=dict(rec.get("metadata") or {})))
            total += len(text.encode("utf-8"))
            if total >= target_bytes:
                break
        copy += 1
    return docs


def fake_corpus(storage: Storage, stage: str, key: str, tokens_estimate: int = 0) -> Manifest:
    """A stats manifest whose corpus is the shards of one stage output (what the shard stage reads)."""
    return Manifest(
        stage="stats",
        key=key,
        url=storage.url("stats", key),
        config={},
        code_version="benchmark",
        stats={"parts": [{"stage": stage, "key": key}], "tokens_estimate": tokens_estimate},
        created_at=datetime.now(UTC),
    )


def build_inputs(work: Path, target_mb: float) -> dict:
    """Collected sample, tokenizer trained on it, and the synthetic corpus, all in `work/base`."""
    base = Storage(str(work / "base"))
    cfg = load_config(RECIPE)
    collected = collect(base, cfg.corpus, [str(SAMPLE)])
    sample = list(iter_records(base.datafolder("collect", collected.key, "shards")))
    tok_cfg = TokenizerConfig(**{**cfg.tokenizer.model_dump(), "vocab_size": 4096})
    tokenizer = train_tokenizer(base, tok_cfg, fake_corpus(base, "collect", collected.key))

    docs = synthetic_docs(sample, int(target_mb * MB), SEED)
    n_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    with shard_writer(base.datafolder("detox", "bench", "shards")) as writer:
        for i, doc in enumerate(docs):
            writer.write(doc, rank=i % CORPUS_FILES)
    corpus = fake_corpus(base, "detox", "bench", tokens_estimate=n_bytes // 4)
    with base.fs.open(base.path("tokenizer", tokenizer.key, "tokenizer.model"), "rb") as f:
        model = f.read()
    return {
        "base": base,
        "sample_documents": len(sample),
        "documents": len(docs),
        "bytes": n_bytes,
        "tok_cfg": tok_cfg,
        "tokenizer": tokenizer,
        "corpus": corpus,
        "model": model,
    }


def fresh_store(inputs: dict, root: Path) -> Storage:
    """A new storage root holding only the corpus and the tokenizer (hard links, no copying)."""
    base = Path(inputs["base"].root)
    for rel in ("detox/bench", f"tokenizer/{inputs['tokenizer'].key}"):
        shutil.copytree(base / rel, root / rel, copy_function=os.link)
    return Storage(str(root))


# --- measuring -------------------------------------------------------------------------------------


def measured(watch: ProcessTree, n_bytes: int, **extra) -> dict:
    return {
        "seconds": round(watch.wall, 3),
        "mb_per_s": round(n_bytes / MB / watch.wall, 2),
        "cpu_seconds": round(watch.cpu_seconds, 2),
        "cores_used": round(watch.cpu_seconds / watch.wall, 2),
        "others_share": round(watch.others_share, 3),
        **extra,
    }


def wait_quiet(max_wait_s: float, threshold: float = 0.15) -> float:
    """Wait (at most `max_wait_s`) until other programs use under `threshold` of the cores; returns the
    seconds waited. Called before each timed run, when this program itself is idle."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        if psutil.cpu_percent(interval=0.5) / 100 < threshold:
            break
    return round(time.monotonic() - started, 1)


def run_stage_once(inputs: dict, root: Path, tasks: int, workers: int) -> dict:
    """One shard stage run into a fresh storage root; returns its time and what it produced."""
    store = fresh_store(inputs, root)
    cfg = ShardsConfig(tasks=tasks, workers=workers, batch_docs=BATCH_DOCS)
    with ProcessTree() as watch:
        manifest = tokenize_corpus(store, cfg, inputs["tok_cfg"], inputs["corpus"], inputs["tokenizer"])
    totals = manifest.stats["totals"]
    documents = sum(t["documents"] for t in totals.values())
    n_bytes = sum(t["bytes"] for t in totals.values())
    if (documents, n_bytes) != (inputs["documents"], inputs["bytes"]):
        raise RuntimeError(
            f"the stage saw {documents} documents / {n_bytes} bytes, expected "
            f"{inputs['documents']} / {inputs['bytes']}"
        )
    result = measured(watch, n_bytes, tokens=manifest.stats["tokens"], manifest_seconds=manifest.seconds)
    shutil.rmtree(root)
    return result


def load_texts(inputs: dict) -> list[str]:
    base = inputs["base"]
    return [r["text"] for r in iter_records(base.datafolder("detox", "bench", "shards"))]


def run_bare_once(sp: spm.SentencePieceProcessor, texts: list[str], n_bytes: int, threads: int = -1) -> dict:
    """`sp.encode` over in-memory texts, in batches of the stage's size (ids only, nothing written);
    `threads=-1` lets SentencePiece use every core."""
    tokens = 0
    with ProcessTree() as watch:
        for start in range(0, len(texts), BATCH_DOCS):
            encoded = sp.encode(texts[start : start + BATCH_DOCS], num_threads=threads)
            tokens += sum(len(ids) for ids in encoded)
    return measured(watch, n_bytes, tokens=tokens + len(texts))  # + one </s> per document, as the stage


def breakdown(
    inputs: dict,
    sp: spm.SentencePieceProcessor,
    texts: list[str],
    scratch: Path,
    repeats: int,
    max_wait: float,
) -> dict:
    """Where one rank's time goes, without the executor: each part timed alone, in this process, best of
    `repeats`."""
    base, n_bytes = inputs["base"], inputs["bytes"]
    folder = base.datafolder("detox", "bench", "shards")
    docs: list[Document] = []

    def read() -> dict:
        docs.clear()
        with ProcessTree() as watch:
            docs.extend(ShardReader(folder).run(None, 0, 1))
        return measured(watch, n_bytes, documents=len(docs))

    def step() -> dict:
        out = Storage(str(scratch)).datafolder("out")
        tokenize = TokenizeToShards(inputs["model"], out, inputs["tok_cfg"].val_fraction, BATCH_DOCS)
        with ProcessTree() as watch:
            deque(tokenize.run(iter(docs), 0, 1) or (), maxlen=0)
        shutil.rmtree(scratch, ignore_errors=True)
        return measured(watch, n_bytes)

    parts = {
        "read_shards": read,
        "encode_threads_all": lambda: run_bare_once(sp, texts, n_bytes, -1),
        "encode_threads_1": lambda: run_bare_once(sp, texts, n_bytes, 1),
        "tokenize_step": step,
    }
    runs: dict[str, list[dict]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, measure in parts.items():
            wait_quiet(max_wait)
            runs[name].append(measure())
    out = {name: best(r) for name, r in runs.items()}
    out["step_minus_encode_seconds"] = round(
        out["tokenize_step"]["seconds"] - out["encode_threads_all"]["seconds"], 3
    )
    return out


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def verdict(name: str, value: float) -> str:
    op, threshold = TARGETS[name]
    ok = value >= threshold if op == ">=" else value <= threshold
    return "PASS" if ok else "FAIL"


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sentencepiece": spm.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(rows: list[dict]) -> None:
    widths = [max(len(str(r[k])) for r in [*rows, {k: k for k in rows[0]}]) for k in rows[0]]
    header = "  ".join(k.ljust(w) for k, w in zip(rows[0], widths, strict=True))
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r.values(), widths, strict=True)))


# --- the run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict:
    started = time.perf_counter()
    print("input")
    inputs = build_inputs(work, args.mb)
    texts = load_texts(inputs)
    sp = spm.SentencePieceProcessor(model_proto=inputs["model"])
    print(
        f"  {inputs['documents']} documents ({inputs['sample_documents']} from the sample, the rest "
        f"perturbed copies), {inputs['bytes'] / MB:.1f} MB of text in {CORPUS_FILES} gzipped shards; "
        f"BPE {sp.get_piece_size()} pieces; batches of {BATCH_DOCS} documents"
    )

    print(f"\nruns (best of {args.repeats}; 'others' = share of the cores used by other programs meanwhile)")
    runs: dict[str, list[dict]] = {"stage_1": [], "bare": [], "stage_2": []}
    for i in range(args.repeats):
        for name in runs:
            waited = wait_quiet(args.max_wait)
            if name == "bare":
                r = run_bare_once(sp, texts, inputs["bytes"], threads=1)
            else:
                n = int(name[-1])
                r = run_stage_once(inputs, work / f"run-{name}-{i}", tasks=n, workers=n)
            r["waited_s"] = waited
            runs[name].append(r)
            print(
                f"  {i + 1}  {name:8s} {r['seconds']:7.2f} s  {r['mb_per_s']:6.2f} MB/s  "
                f"CPU {r['cpu_seconds']:6.2f} s ({r['cores_used']:.2f} cores)  others {r['others_share']:.0%}"
            )
    s1, bare, s2 = best(runs["stage_1"]), best(runs["bare"]), best(runs["stage_2"])
    if s1["tokens"] != bare["tokens"] or s2["tokens"] != bare["tokens"]:
        raise RuntimeError(
            f"token counts differ: stage {s1['tokens']} / {s2['tokens']}, bare {bare['tokens']}"
        )

    print(f"\nbreakdown: one process, no executor, each part alone, best of {args.repeats}")
    parts = breakdown(inputs, sp, texts, work / "breakdown", args.repeats, args.max_wait)
    for name, r in parts.items():
        if isinstance(r, dict):
            print(
                f"  {name:22s} {r['seconds']:7.2f} s  {r['mb_per_s']:6.2f} MB/s  "
                f"CPU {r['cpu_seconds']:6.2f} s ({r['cores_used']:.2f} cores)  others {r['others_share']:.0%}"
            )
    print(f"  TokenizeToShards beyond sp.encode: {parts['step_minus_encode_seconds']:.2f} s")

    ratio = round(s1["mb_per_s"] / bare["mb_per_s"], 3)
    speedup = round(s1["seconds"] / s2["seconds"], 3)
    rows = [
        {
            "measure": "stage (1 task, 1 worker) / bare sp.encode, MB/s",
            "value": f"{s1['mb_per_s']} / {bare['mb_per_s']} = {ratio}",
            "target": ">= 0.9",
            "result": verdict("stage_vs_bare", ratio),
        },
        {
            "measure": "stage speed-up, 2 tasks on 2 workers vs 1 on 1",
            "value": f"{s1['seconds']} s / {s2['seconds']} s = {speedup}x",
            "target": ">= 1.8x",
            "result": verdict("speedup_2_workers", speedup),
        },
        {
            "measure": "  info: cores kept busy, stage 1 worker / bare / stage 2 workers",
            "value": f"{s1['cores_used']} / {bare['cores_used']} / {s2['cores_used']}",
            "target": "",
            "result": "",
        },
    ]
    return {
        "benchmark": "tokenize_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "repeats": args.repeats,
        "input": {
            "documents": inputs["documents"],
            "sample_documents": inputs["sample_documents"],
            "mb_text": round(inputs["bytes"] / MB, 2),
            "corpus_files": CORPUS_FILES,
            "batch_docs": BATCH_DOCS,
            "vocab_size": sp.get_piece_size(),
            "tokens": bare["tokens"],
        },
        "bare_excludes": "reading and decompressing the shards, writing token files, executor, manifest",
        "stage_vs_bare": {
            "stage": s1,
            "bare": bare,
            "ratio": ratio,
        },
        "speedup_2_workers": {"one": s1, "two": s2, "speedup": speedup},
        "runs": runs,
        "breakdown": parts,
        "summary": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small corpus, one repeat: a smoke run")
    ap.add_argument("--mb", type=float, default=0, help="MB of text in the corpus (default 64; quick 3)")
    ap.add_argument("--repeats", type=int, default=0, help="runs of each side (default 3; quick 1)")
    ap.add_argument(
        "--max-wait", type=float, default=-1, help="seconds to wait for a quiet machine before each run"
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (and its log)")
    args = ap.parse_args()
    args.mb = args.mb or (3 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.max_wait < 0:
        args.max_wait = 0 if args.quick else 60

    with scratch("forja-tokenize-bench-", args.keep) as work:
        report = run(args, work)
    print_table(report["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwritten: {args.out} ({report['seconds']} s)")
    return 1 if any(r["result"] == "FAIL" for r in report["summary"]) else 0


if __name__ == "__main__":
    sys.exit(main())
