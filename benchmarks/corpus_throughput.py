"""Corpus throughput: what the flow costs over bare datatrove, how it scales, and how fast MinHash signs.

    python benchmarks/corpus_throughput.py [--quick] [--keep] [--out PATH] [--max-wait S]
        [--docs N] [--overhead-docs N] [--repeats N] [--minhash-docs N]

Three measurements, each a ratio against a reference measured in the same run on the same machine:

1. Flow overhead: clean + dedup + detox through the stage functions (content keys, manifests, a sha256
   digest of every output file, filter reports) against the same datatrove pipelines built here and run
   with LocalPipelineExecutor into a scratch folder, without manifests. Same input, same tasks and
   workers, each run in a fresh folder, alternated and repeated; each side's best run counts. CPU time
   of the process tree is reported next to it: unlike wall time, it hardly moves when other programs
   share the cores. Target: ours/bare docs/s >= 0.9.
2. Scaling: wall time and peak memory (RSS summed over this process and all its children, polled) of
   collect -> clean -> dedup -> detox -> stats at 1x and 4x the input.
   Targets: time 4x/1x <= 4.4; peak memory about flat (4x/1x <= 1.25).
3. MinHash signatures, single process, same documents, same MinhashConfig: datatrove's
   MinhashDedupSignature (spaCy word tokenizer) against FastMinhashSignature, in documents per
   CPU-second of the process (docs/s/core). Target: >= 3x. Recall is checked on the planted
   near-duplicate pairs of the bundled sample: the share of pairs whose signatures agree on at least one
   full bucket, i.e. that LSH would compare (target >= 0.97 for both), next to the share of unrelated
   pairs of the sample that collide.

Input: the bundled sample (data/sample), collected, plus synthetic documents made from it. A synthetic
document keeps the shape of a sample document (paragraphs, sentences per paragraph, language) and fills
it with sentences drawn at random from documents of the same source and language, so copies are not
duplicates of each other; clean drops about the same share as on the sample (~14 %), toxic documents
make toxic copies, and the duplicates are the sample's planted ones. Recipe: configs/tiny.yaml.

Results go to benchmarks/results/corpus_throughput.json (with date and machine). The exit status is 1
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
from collections import defaultdict, deque
from datetime import UTC, datetime
from importlib.metadata import version
from itertools import combinations
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from datatrove.data import Document  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.io import DataFolder  # noqa: E402
from datatrove.pipeline.dedup import (  # noqa: E402
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (  # noqa: E402
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from machine_load import ProcessTree, scratch  # noqa: E402 - next to this script

from tasks.config import CorpusConfig, load_config  # noqa: E402
from tasks.corpus.clean import clean, clean_steps  # noqa: E402
from tasks.corpus.collect import collect  # noqa: E402
from tasks.corpus.dedup import (  # noqa: E402
    EXACT,
    FastMinhashSignature,
    dedup,
    minhash_config,
    signature_step,
    write_exact_index,
)
from tasks.corpus.detox import detox  # noqa: E402
from tasks.corpus.shards import iter_records, shard_reader, shard_writer  # noqa: E402
from tasks.corpus.stats import measure  # noqa: E402
from tasks.corpus.toxicity import build_toxicity_filter  # noqa: E402
from tasks.dt import written  # noqa: E402
from tasks.manifest import Manifest  # noqa: E402
from tasks.storage import Storage  # noqa: E402

SAMPLE = REPO / "data" / "sample"
TRUTH = REPO / "data" / "sample-truth.json"
RECIPE = REPO / "configs" / "tiny.yaml"
OUT = REPO / "benchmarks" / "results" / "corpus_throughput.json"
SEED = 20240611
INPUT_FILES = 8  # JSONL files per synthetic input, so that collect has work for every task
DISTURBED = 0.25  # share of the cores used by other programs above which a timing is flagged

# Targets: (comparison, threshold).
TARGETS = {
    "overhead": (">=", 0.9),
    "scaling_time": ("<=", 4.4),
    "scaling_memory": ("<=", 1.25),
    "minhash_speedup": (">=", 3.0),
    "recall": (">=", 0.97),
}


# --- input -----------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def _shape(text: str) -> list[list[str]]:
    """Paragraphs (lines) of sentences; a line without sentence punctuation is one unit."""
    return [[s for s in _SENTENCE_END.split(line) if s] for line in text.split("\n")]


def _source_group(rec: dict) -> tuple[str, str]:
    """Where a document comes from: its folder for single-document files, else its file; and its language."""
    meta = rec["metadata"]
    path = meta.get("path", "")
    where = path.rsplit("/", 1)[0] if meta.get("source") == "file" else path
    return where, meta.get("lang", "und")


def synthesize(records: list[dict], n: int, seed: int) -> list[dict]:
    """`n` documents: the sample's own first, then rounds of new ones shaped like them (see the module
    docstring). Any first m documents are a fair mix of the sample's kinds."""
    pools: dict[tuple[str, str], list[str]] = defaultdict(list)
    shapes = []
    for rec in records:
        shape = _shape(rec["text"])
        pools[_source_group(rec)].extend(unit for para in shape for unit in para)
        shapes.append(shape)
    rng = random.Random(seed)
    docs = []
    order: list[int] = []
    for i in range(n):
        if i % len(records) == 0:  # every round takes each sample document once, in a new order
            order = rng.sample(range(len(records)), len(records))
        k, copy = order[i % len(records)], i // len(records)
        rec = records[k]
        if copy == 0:
            docs.append({"id": rec["id"], "text": rec["text"]})
            continue
        pool = pools[_source_group(rec)]
        text = "\n".join(" ".join(rng.choice(pool) for _ in para) for para in shapes[k])
        docs.append({"id": f"{rec['id']}~{copy:03d}", "text": text})
    return docs


def write_input(docs: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True)
    files = [(folder / f"part-{i:02d}.jsonl").open("w", encoding="utf-8") for i in range(INPUT_FILES)]
    for i, doc in enumerate(docs):
        files[i % INPUT_FILES].write(json.dumps(doc, ensure_ascii=False) + "\n")
    for f in files:
        f.close()


def collected_records(storage: Storage, manifest: Manifest) -> list[dict]:
    return list(iter_records(storage.datafolder(manifest.stage, manifest.key, "shards")))


# --- measuring -------------------------------------------------------------------------------------


class Quiet:
    """Waits, before a timed run, until other programs leave the cores alone, within a total budget."""

    def __init__(self, budget_s: float, probe_s: float = 1.0):
        self.budget_s, self.probe_s = budget_s, probe_s
        self.waited_s = 0.0

    def wait(self) -> None:
        # This process tree is idle between runs, so whatever keeps the cores busy now is someone else.
        while self.waited_s < self.budget_s and psutil.cpu_percent(interval=self.probe_s) / 100 > DISTURBED:
            self.waited_s += self.probe_s


class Timer:
    def __init__(self):
        self.stages: dict[str, float] = {}
        self._last = self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self._last, 3)
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self._start


def mib(n: int) -> float:
    return round(n / 2**20, 1)


# --- 1. flow vs bare datatrove ---------------------------------------------------------------------


def run_ours(cfg: CorpusConfig, collected: Manifest, root: Path) -> dict:
    """clean -> dedup -> detox through the stage functions, in storage `root` (holding only `collected`)."""
    store = Storage(str(root))
    timer = Timer()
    cleaned = clean(store, cfg, collected)
    timer.lap("clean")
    deduped = dedup(store, cfg, cleaned)
    timer.lap("dedup")
    final = detox(store, cfg, deduped)
    timer.lap("detox")
    return {
        "seconds": round(timer.total, 3),
        "stages": timer.stages,
        "documents": {m.stage: m.stats["documents"] for m in (cleaned, deduped, final)},
    }


class Scratch:
    """Folders under one local path (what the bare runs write to; no keys, no manifests)."""

    def __init__(self, root: Path):
        self.root = root

    def folder(self, *parts: str) -> DataFolder:
        return DataFolder(str(self.root.joinpath(*parts)), auto_mkdir=True)


def execute(pipeline: list, logs: DataFolder, tasks: int, workers: int):
    return LocalPipelineExecutor(
        pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=logs
    ).run()


def run_bare(cfg: CorpusConfig, source: DataFolder, root: Path) -> dict:
    """The datatrove pipelines of clean, dedup and detox, built and run directly."""
    tasks, workers, d = cfg.tasks, cfg.workers, cfg.dedup
    timer = Timer()
    documents = {}

    c = Scratch(root / "clean")
    steps, _ = clean_steps(cfg.clean, c)
    cleaned = c.folder("shards")
    stats = execute([shard_reader(source), *steps, shard_writer(cleaned)], c.folder("logs"), tasks, workers)
    documents["clean"] = written(stats)
    timer.lap("clean")

    x = Scratch(root / "dedup")
    exact_filter, near_filter = [], []
    if d.exact:
        sigs, dups = x.folder("exact", "sigs"), x.folder("exact", "dups")
        execute(
            [shard_reader(cleaned), ExactDedupSignature(sigs, EXACT)], x.folder("logs", "e1"), tasks, workers
        )
        execute(
            [ExactFindDedups(sigs, dups, EXACT, index_folder=x.folder("index", "exact"))],
            x.folder("logs", "e2"),
            1,
            1,
        )
        exact_filter = [
            ExactDedupFilter(dups, EXACT, exclusion_writer=shard_writer(x.folder("removed", "exact")))
        ]
    if d.near:
        mh = minhash_config(d)
        msigs, buckets, clusters = (x.folder("minhash", n) for n in ("sigs", "buckets", "clusters"))
        unique = [ExactDedupFilter(dups, EXACT)] if d.exact else []
        execute(
            [shard_reader(cleaned), *unique, signature_step(d, msigs)], x.folder("logs", "m1"), tasks, workers
        )
        bucket_step = MinhashDedupBuckets(
            msigs,
            buckets,
            index_folder=x.folder("index", "minhash"),
            config=mh,
            only_dedup_in_index=False,
            create_index_name="bare",
        )
        execute([bucket_step], x.folder("logs", "m2"), d.num_buckets, workers)
        execute([MinhashDedupCluster(buckets, clusters, config=mh)], x.folder("logs", "m3"), 1, 1)
        near_filter = [
            MinhashDedupFilter(clusters, exclusion_writer=shard_writer(x.folder("removed", "near")))
        ]
    deduped = x.folder("shards")
    stats = execute(
        [shard_reader(cleaned), *exact_filter, *near_filter, shard_writer(deduped)],
        x.folder("logs", "filter"),
        tasks,
        workers,
    )
    if d.exact:
        write_exact_index(sigs, x.folder("index", "exact"), "bare")
    documents["dedup"] = written(stats)
    timer.lap("dedup")

    t = Scratch(root / "detox")
    last = [shard_writer(t.folder("shards"))]
    if cfg.detox.enabled:
        last.insert(0, build_toxicity_filter(cfg.detox, shard_writer(t.folder("removed", "toxicity"))))
    stats = execute([shard_reader(deduped), *last], t.folder("logs"), tasks, workers)
    documents["detox"] = written(stats)
    timer.lap("detox")
    return {"seconds": round(timer.total, 3), "stages": timer.stages, "documents": documents}


def overhead(
    cfg: CorpusConfig, collected: Manifest, collect_root: Path, work: Path, repeats: int, quiet: Quiet
) -> dict:
    """Ours and bare, alternated, each run in a fresh folder; the best wall time of each side counts."""
    collected_dir = collect_root / collected.stage / collected.key
    source = Storage(str(collect_root)).datafolder(collected.stage, collected.key, "shards")
    docs_in = collected.stats["documents"]
    runs: dict[str, list[dict]] = {"ours": [], "bare": []}
    for i in range(repeats):
        for side in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
            root = work / f"{side}-{i}"
            if side == "ours":  # a storage root that holds the collected artifact and nothing else
                target = root / collected.stage / collected.key
                shutil.copytree(collected_dir, target, ignore=shutil.ignore_patterns("_work"))
            quiet.wait()
            with ProcessTree(interval_s=0.1) as tree:
                result = run_ours(cfg, collected, root) if side == "ours" else run_bare(cfg, source, root)
            result["cpu_seconds"] = round(tree.cpu_seconds, 2)
            result["others_share"] = tree.others_share
            runs[side].append(result)
            print(
                f"  {side:4s} run {i + 1}: {result['seconds']:7.2f} s wall {result['cpu_seconds']:7.2f} s CPU"
                f"  {fmt_stages(result['stages'])}  [other programs: {tree.others_share:.0%} of the cores]"
            )
            shutil.rmtree(root, ignore_errors=True)
    best = {side: min(rs, key=lambda r: r["seconds"]) for side, rs in runs.items()}
    rate = {side: docs_in / r["seconds"] for side, r in best.items()}
    cpu = {side: min(r["cpu_seconds"] for r in rs) for side, rs in runs.items()}
    disturbed = max(r["others_share"] for r in best.values())
    return {
        "documents_in": docs_in,
        "repeats": repeats,
        "runs": runs,
        "best_seconds": {side: r["seconds"] for side, r in best.items()},
        "docs_per_s": {side: round(v, 1) for side, v in rate.items()},
        "ratio": round(rate["ours"] / rate["bare"], 3),
        "min_cpu_seconds": cpu,
        "cpu_ratio": round(cpu["bare"] / cpu["ours"], 3),
        # Share of the cores other programs used during the best runs: above ~0.25 the wall-time ratio
        # says more about them than about the code.
        "others_share_in_best_runs": disturbed,
        "same_output": all(
            r["documents"] == runs["bare"][0]["documents"] for rs in runs.values() for r in rs
        ),
    }


def fmt_stages(stages: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.1f}" for k, v in stages.items())


# --- 2. scaling ------------------------------------------------------------------------------------


def flow_stages(cfg: CorpusConfig, input_dir: Path, root: Path, quiet: Quiet) -> dict:
    """collect -> clean -> dedup -> detox -> stats through the stage functions, with time and memory."""
    store = Storage(str(root))
    quiet.wait()
    with ProcessTree(interval_s=0.05) as tree:
        timer = Timer()
        collected = collect(store, cfg, [str(input_dir)])
        timer.lap("collect")
        cleaned = clean(store, cfg, collected)
        timer.lap("clean")
        deduped = dedup(store, cfg, cleaned)
        timer.lap("dedup")
        final = detox(store, cfg, deduped)
        timer.lap("detox")
        corpus = measure(store, cfg, [final], [collected, cleaned, deduped, final])
        timer.lap("stats")
    return {
        "documents_in": collected.stats["documents"],
        "documents_out": corpus.stats["documents"],
        "funnel": {r["stage"]: r["documents_out"] for r in corpus.stats["funnel"]},
        "seconds": round(timer.total, 3),
        "stages": timer.stages,
        "cpu_seconds": round(tree.cpu_seconds, 2),
        "others_share": tree.others_share,
        "peak_rss_mib": mib(tree.peak_rss),
    }


# --- 3. MinHash signatures ---------------------------------------------------------------------------


def signature_speed(make, docs: list[Document], folder: Path) -> dict:
    """Runs the signature step over `docs` in this process (signatures written and sorted, as in a task)."""
    step = make(DataFolder(str(folder), auto_mkdir=True))
    step.get_shingles(docs[0].text)  # loads the word tokenizer, if any, before the clock starts
    wall, cpu = time.perf_counter(), time.process_time()
    out = step.run(iter(docs), 0, 1)
    if out is not None:
        deque(out, maxlen=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # One process on one core: docs per CPU-second of it (what wall time would give on an idle core).
    return {
        "documents": len(docs),
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "docs_per_s": round(len(docs) / wall, 1),
        "docs_per_s_per_core": round(len(docs) / cpu, 1),
    }


def _buckets(step, text: str) -> list[tuple[int, ...]] | None:
    shingles = step.get_shingles(text)
    return None if shingles.size == 0 else [tuple(b) for b in step.get_signature(shingles)]


def lsh_recall(step, records: list[dict], truth: dict) -> dict:
    """Planted near pairs that share a full bucket, and unrelated pairs of the sample that do."""
    texts = {r["id"]: r["text"] for r in records}
    sigs = {i: s for i, t in texts.items() if (s := _buckets(step, t)) is not None}
    planted = [p for p in truth["near"] if p["id"] in texts and p["of"] in texts]
    missed = [
        p
        for p in planted
        if p["id"] not in sigs or p["of"] not in sigs or not set(sigs[p["id"]]) & set(sigs[p["of"]])
    ]
    # Documents related by a planted pair (exact or near, transitively) or by identical text are one group.
    parent = {i: i for i in texts}

    def find(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_text: dict[str, str] = {}
    links = [
        (p["id"], p["of"]) for p in truth["exact"] + truth["near"] if p["id"] in texts and p["of"] in texts
    ]
    for i, t in texts.items():
        links.append((i, by_text.setdefault(t, i)))
    for a, b in links:
        parent[find(a)] = find(b)
    group_sizes: dict[str, int] = defaultdict(int)
    for i in sigs:
        group_sizes[find(i)] += 1
    n = len(sigs)
    unrelated = n * (n - 1) // 2 - sum(k * (k - 1) // 2 for k in group_sizes.values())
    colliding = set()
    for b in range(step.config.num_buckets):
        same_bucket: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for i, s in sigs.items():
            same_bucket[s[b]].append(i)
        for ids in same_bucket.values():
            colliding.update((x, y) for x, y in combinations(sorted(ids), 2) if find(x) != find(y))
    r, bands = step.config.hashes_per_bucket, step.config.num_buckets
    expected = sum(1 - (1 - p["jaccard"] ** r) ** bands for p in planted) / len(planted)
    return {
        "planted_pairs": len(planted),
        "recall": round(1 - len(missed) / len(planted), 4),
        "expected_recall": round(expected, 4),
        "missed": missed,
        "unrelated_pairs": unrelated,
        "unrelated_colliding": len(colliding),
        "unrelated_collision_rate": round(len(colliding) / unrelated, 6) if unrelated else 0.0,
        "unrelated_colliding_examples": sorted(colliding)[:10],
    }


def minhash(cfg: CorpusConfig, speed_docs: list[Document], sample: list[dict], work: Path) -> dict:
    mh = minhash_config(cfg.dedup)
    impls = {
        "datatrove_spacy": lambda folder: MinhashDedupSignature(folder, config=mh),
        "fast": lambda folder: FastMinhashSignature(folder, mh),
    }
    truth = json.loads(TRUTH.read_text(encoding="utf-8"))
    result = {"config": str(mh), "speed": {}, "lsh": {}}
    for name, make in impls.items():
        result["speed"][name] = signature_speed(make, speed_docs, work / f"sigs-{name}")
        result["lsh"][name] = lsh_recall(make(DataFolder(str(work / f"lsh-{name}"))), sample, truth)
    speed = result["speed"]
    result["speedup"] = round(
        speed["fast"]["docs_per_s_per_core"] / speed["datatrove_spacy"]["docs_per_s_per_core"], 2
    )
    return result


# --- report ----------------------------------------------------------------------------------------


def verdict(name: str, value: float) -> str:
    op, limit = TARGETS[name]
    ok = value >= limit if op == ">=" else value <= limit
    return "PASS" if ok else "FAIL"


def summary_rows(report: dict) -> list[dict]:
    o, s, m = report["overhead"], report["scaling"], report["minhash"]
    busy_scaling = max(s[label]["others_share"] for label in ("1x", "4x"))
    rows = [  # (target, label, value, share of the cores other programs used while it was timed)
        ("overhead", "flow/bare docs/s, clean+dedup+detox", o["ratio"], o["others_share_in_best_runs"]),
        ("scaling_time", "time 4x/1x, collect..stats", s["time_ratio"], busy_scaling),
        ("scaling_memory", "peak RSS 4x/1x, collect..stats", s["memory_ratio"], 0.0),
        ("minhash_speedup", "MinHash docs/s/core fast/spaCy", m["speedup"], 0.0),
        ("recall", "LSH recall planted pairs, spaCy", m["lsh"]["datatrove_spacy"]["recall"], 0.0),
        ("recall", "LSH recall planted pairs, fast", m["lsh"]["fast"]["recall"], 0.0),
    ]
    return [
        {
            "check": label,
            "measured": value,
            "target": " ".join(map(str, TARGETS[key])),
            "result": verdict(key, value),
            "disturbed": busy > DISTURBED,
        }
        for key, label, value, busy in rows
    ]


def print_table(rows: list[dict]) -> None:
    print(f"\n{'check':40s} {'measured':>9s}  {'target':8s} result")
    for r in rows:
        note = "  (timed while other programs were busy)" if r["disturbed"] else ""
        print(f"{r['check']:40s} {r['measured']:9.3f}  {r['target']:8s} {r['result']}{note}")


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": {name: version(name) for name in ("datatrove", "spacy", "numpy")},
    }


# --- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict:
    cfg = load_config(RECIPE).corpus
    started = time.perf_counter()
    quiet = Quiet(args.max_wait)

    print("input")
    sample_root = work / "sample-store"
    sample_manifest = collect(Storage(str(sample_root)), cfg, [str(SAMPLE)])
    sample = collected_records(Storage(str(sample_root)), sample_manifest)
    n1 = args.docs or (250 if args.quick else 1000)
    n_overhead = args.overhead_docs or (250 if args.quick else 2000)
    docs = synthesize(sample, max(4 * n1, n_overhead), SEED)
    write_input(docs[:n1], work / "input-1x")
    write_input(docs[: 4 * n1], work / "input-4x")
    write_input(docs[:n_overhead], work / "input-overhead")
    del docs
    part1_root = work / "overhead-store"
    part1_input = collect(Storage(str(part1_root)), cfg, [str(work / "input-overhead")])
    print(
        f"  sample: {len(sample)} documents; synthetic input: {n_overhead} documents (part 1), "
        f"1x = {n1} and 4x = {4 * n1} (part 2)"
    )

    setting = f"{cfg.tasks} tasks on {cfg.workers} workers"
    print(f"\n1. flow vs bare datatrove: clean + dedup + detox, {setting}, alternated")
    over = overhead(cfg, part1_input, part1_root, work / "overhead", args.repeats, quiet)
    print(
        f"  {over['documents_in']} docs, best of {args.repeats}: ours {over['docs_per_s']['ours']} docs/s, "
        f"bare {over['docs_per_s']['bare']} docs/s; ratio ours/bare {over['ratio']} "
        f"(CPU time bare/ours {over['cpu_ratio']}); same output: {over['same_output']}"
    )
    if (busy := over["others_share_in_best_runs"]) > DISTURBED:
        print(f"  note: other programs used {busy:.0%} of the cores during a best run (see the README)")

    print("\n2. scaling: collect -> clean -> dedup -> detox -> stats (stage functions)")
    scaling = {}
    for label in ("1x", "4x"):
        root = work / f"flow-{label}"
        scaling[label] = flow_stages(cfg, work / f"input-{label}", root, quiet)
        shutil.rmtree(root, ignore_errors=True)
        r = scaling[label]
        print(
            f"  {label}: {r['documents_in']:6d} docs {r['seconds']:7.2f} s wall {r['cpu_seconds']:7.2f} s CPU"
            f"  peak RSS {r['peak_rss_mib']:7.1f} MiB  {fmt_stages(r['stages'])}"
            f"  [other programs: {r['others_share']:.0%}]"
        )
    scaling["time_ratio"] = round(scaling["4x"]["seconds"] / scaling["1x"]["seconds"], 3)
    scaling["cpu_ratio"] = round(scaling["4x"]["cpu_seconds"] / scaling["1x"]["cpu_seconds"], 3)
    scaling["memory_ratio"] = round(scaling["4x"]["peak_rss_mib"] / scaling["1x"]["peak_rss_mib"], 3)
    scaling["documents_ratio"] = round(scaling["4x"]["documents_in"] / scaling["1x"]["documents_in"], 3)
    print(
        f"  4x/1x: documents {scaling['documents_ratio']}, time {scaling['time_ratio']} "
        f"(CPU {scaling['cpu_ratio']}), peak RSS {scaling['memory_ratio']}"
    )

    print("\n3. MinHash signature stage, one process")
    speed_docs = [
        Document(text=r["text"], id=r["id"], metadata=r["metadata"])
        for r in collected_records(Storage(str(part1_root)), part1_input)[: args.minhash_docs]
    ]
    mh = minhash(cfg, speed_docs, sample, work / "minhash")
    for name, s in mh["speed"].items():
        lsh = mh["lsh"][name]
        print(
            f"  {name:16s} {s['docs_per_s_per_core']:8.1f} docs/s/core  recall {lsh['recall']:.3f}"
            f" (S-curve {lsh['expected_recall']:.3f}, {lsh['planted_pairs']} planted pairs)  unrelated pairs"
            f" colliding {lsh['unrelated_colliding']}/{lsh['unrelated_pairs']}"
            f" ({lsh['unrelated_collision_rate']:.2e})"
        )
    print(f"  speed-up {mh['speedup']}x on {len(speed_docs)} documents")

    report = {
        "benchmark": "corpus_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "recipe": str(RECIPE.relative_to(REPO)),
        "tasks": cfg.tasks,
        "workers": cfg.workers,
        "seconds": 0.0,
        "waited_for_idle_cores_s": quiet.waited_s,
        "overhead": over,
        "scaling": scaling,
        "minhash": mh,
    }
    report["summary"] = summary_rows(report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small input, one repeat: a smoke run")
    ap.add_argument("--docs", type=int, default=0, help="documents of the 1x input (default 1000; quick 250)")
    ap.add_argument(
        "--overhead-docs", type=int, default=0, help="documents of the part 1 input (default 2000; quick 250)"
    )
    ap.add_argument("--repeats", type=int, default=0, help="runs of each side in part 1 (default 3; quick 1)")
    ap.add_argument("--minhash-docs", type=int, default=0, help="documents for the signature speed test")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (and its log)")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=180.0,
        help="seconds in all to wait for other programs to leave the cores before timed runs (0: never)",
    )
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.minhash_docs = args.minhash_docs or (250 if args.quick else 1500)

    sys.stdout.reconfigure(line_buffering=True)
    with scratch("forja-corpus-bench-", args.keep) as work:
        report = run(args, work)
    rows = report["summary"]
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    waited = f", {report['waited_for_idle_cores_s']:.0f} s of it waiting for idle cores"
    print(
        f"\nwritten: {args.out} ({report['seconds']} s{waited if report['waited_for_idle_cores_s'] else ''})"
    )
    return 1 if any(r["result"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
