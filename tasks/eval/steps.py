"""Evaluation as a stage: one model, the configured benchmarks, results keyed like every artifact.

`evaluate` is the plain function (tests and other stages call it); `eval_task` its Prefect task, which
adds the results table and the samples to the UI. The key hashes the evaluation settings, the benchmark
files' digests, the model's key (its stage's key, or a hash of its files) and this code: the same model
under the same settings is evaluated once.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.artifacts import create_table_artifact

from tasks import progress as events
from tasks.config import EvalConfig
from tasks.eval import files
from tasks.eval import source as sources
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.prefect_utils import stage_task
from tasks.storage import Storage

if TYPE_CHECKING:
    from tasks.eval import models as backends

STAGE = "eval"
RESULTS = "eval.json"
HEADLINE = {"bpb": "bpb", "hellaswag": "acc_norm", "gsm8k": "exact_match"}  # mgsm_*: exact_match
log = logging.getLogger("forja")


class Reporter:
    """Progress of the running benchmark: to the `forja` command's bar (tasks.progress) and the log."""

    def __init__(self, every_s: float = 0.25, log_every_s: float = 15.0):
        self.every_s, self.log_every_s = every_s, log_every_s
        self.task, self.done, self.total = "", 0, 0
        self.shown = self.logged = 0.0

    def begin(self, task: str, total: int) -> None:
        self.task, self.done, self.total = task, 0, total
        self.logged = time.monotonic()
        log.info("eval: %s, %d items", task, total)
        self._emit()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.shown >= self.every_s or self.done >= self.total:
            self._emit()
        if now - self.logged >= self.log_every_s:
            self.logged = now
            log.info("eval: %s %d/%d", self.task, self.done, self.total)

    def _emit(self) -> None:
        self.shown = time.monotonic()
        events.emit(STAGE, "update", {"task": self.task, "done": self.done, "total": self.total})


def _data_files(cfg: EvalConfig) -> dict[str, str]:
    """Every benchmark file the enabled tasks read, by the path the recipe names, resolved."""
    wanted: dict[str, str] = {}
    if "bpb" in cfg.tasks:
        wanted.update({p: "bpb_texts" for p in cfg.bpb_texts})
    if "hellaswag" in cfg.tasks:
        wanted[cfg.hellaswag] = "hellaswag"
    if "gsm8k" in cfg.tasks:
        wanted[cfg.gsm8k] = "gsm8k"
    for task in cfg.tasks:
        if task.startswith("mgsm_"):
            wanted[cfg.mgsm[task.removeprefix("mgsm_")]] = "mgsm"
    return {p: files.resolve(p, what) for p, what in wanted.items()}


def _text_names(paths: list[str]) -> list[str]:
    stems = [Path(p).name.split(".")[0] for p in paths]
    return stems if len(set(stems)) == len(stems) else list(paths)


def run_benchmarks(
    lm: backends.LanguageModel, cfg: EvalConfig, data: dict[str, str], report: Reporter | None = None
) -> tuple[dict[str, Any], dict[str, list[dict]], list[dict], dict[str, float]]:
    """(results per task, per-item details per task, samples, seconds per task) for one model."""
    # the benchmarks bring torch: imported when a model is evaluated, not when the pipeline is loaded
    from tasks.eval import bpb, gsm8k, hellaswag, samples

    report = report or Reporter()
    results: dict[str, Any] = {}
    details: dict[str, list[dict]] = {}
    generated: list[dict] = []
    seconds: dict[str, float] = {}
    for task in cfg.tasks:
        started = time.perf_counter()
        if task == "bpb":
            texts = {
                name: files.read_text(data[p])
                for name, p in zip(_text_names(cfg.bpb_texts), cfg.bpb_texts, strict=True)
            }
            report.begin(
                task, sum(bpb.window_count(lm, t, cfg.limit, cfg.bpb_window) for t in texts.values())
            )
            losses = {
                name: bpb.text_loss(lm, text, cfg.limit, cfg.bpb_window, cfg.batch_size, report)
                for name, text in texts.items()
            }
            results[task] = bpb.summarize(losses)
        elif task == "hellaswag":
            items = hellaswag.load(data[cfg.hellaswag], cfg.limit)
            report.begin(task, 4 * len(items))
            results[task], details[task] = hellaswag.evaluate(lm, items, cfg.batch_size, report)
        elif task == "samples":
            report.begin(task, len(cfg.prompts))
            generated = samples.generate(lm, cfg.prompts, cfg.sample_tokens, cfg.batch_size, report)
        else:  # gsm8k, mgsm_<lang>
            lang = "en" if task == "gsm8k" else task.removeprefix("mgsm_")
            path = cfg.gsm8k if task == "gsm8k" else cfg.mgsm[lang]
            problems = gsm8k.load(data[path], lang, cfg.limit)
            report.begin(task, len(problems))
            results[task], details[task] = gsm8k.evaluate(
                lm,
                problems,
                lang,
                cfg.math_prompt[lang],
                cfg.max_new_tokens,
                cfg.stop,
                cfg.batch_size,
                report,
            )
            results[task]["max_new_tokens"] = lm.generation_budget(cfg.max_new_tokens)[0]
        seconds[task] = round(time.perf_counter() - started, 3)
        log.info("eval: %s done in %.1f s: %s", task, seconds[task], headline(task, results.get(task)))
    return results, details, generated, seconds


def headline(task: str, result: dict | None) -> str:
    if not result:
        return ""
    metric = HEADLINE.get(task, "exact_match")
    return f"{metric} {result[metric]:.4f}"


def evaluate(storage: Storage, cfg: EvalConfig, model: Manifest | str) -> Manifest:
    """Evaluate `model` (a stage manifest, a stage folder or manifest.json, a transformers folder or a
    training checkpoint) and return the eval manifest; `<root>/eval/<key>/eval.json` holds the results."""
    source = sources.resolve(model)
    backend = sources.choose_backend(cfg.backend, source)
    data = _data_files(cfg)
    keyed = {
        **cfg.model_dump(mode="json", exclude={"batch_size"}),
        "backend": backend,
        "data": {p: files.digest(resolved) for p, resolved in data.items()},
    }

    def build(out: StageDir) -> dict:
        from tasks.eval import models as backends

        started = time.perf_counter()
        lm = backends.open_model(source, backend, cfg.device, cfg.dtype)
        log.info(
            "eval: %s model from %s loaded in %.1f s", backend, source.path, time.perf_counter() - started
        )
        results, details, generated, seconds = run_benchmarks(lm, cfg, data)
        for task, records in details.items():
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            storage.write_bytes_atomic(body.encode(), STAGE, out.key, "details", f"{task}.jsonl")
        stats = {
            "model": {
                "url": source.ref.url,
                "stage": source.ref.stage,
                "key": source.ref.key,
                "backend": backend,
                "params": lm.num_params(),
                "context": lm.context,
            },
            "results": results,
            "samples": generated,
            "seconds": seconds,
        }
        storage.write_json_atomic({**stats, "config": keyed}, STAGE, out.key, RESULTS)
        return stats

    version = code_version(*_modules())
    return run_stage(storage, STAGE, keyed, {"model": source.ref}, version, build)


def _modules():
    # by name: hashed from their files without importing them (torch and models stay unloaded on a rerun)
    return (
        sys.modules[__name__],
        "tasks.eval.bpb",
        "tasks.eval.gsm8k",
        "tasks.eval.hellaswag",
        "tasks.eval.samples",
        "tasks.eval.models",
        "tasks.eval.source",
        "tasks.eval.files",
        "models.answers",
        "models.load",
        "models.model",
    )


def result_rows(m: Manifest) -> list[dict]:
    """One row per task and metric (bits per byte per text too): the results table."""
    rows = []
    for task, result in m.stats["results"].items():
        if task == "bpb":
            rows.append({"task": "bpb", "metric": "bits/byte", "value": result["bpb"], "items": None})
            for name, text in result["texts"].items():
                rows.append(
                    {
                        "task": f"bpb/{name}",
                        "metric": "bits/byte",
                        "value": text["bpb"],
                        "items": text["tokens"],
                    }
                )
        elif task == "hellaswag":
            for metric in ("acc_norm", "acc"):
                rows.append(
                    {"task": task, "metric": metric, "value": result[metric], "items": result["items"]}
                )
        else:
            rows.append(
                {
                    "task": task,
                    "metric": "exact_match",
                    "value": result["exact_match"],
                    "items": result["items"],
                }
            )
    for row in rows:
        row["value"] = None if row["value"] is None or math.isnan(row["value"]) else round(row["value"], 4)
    return rows


def _eval(storage: Storage, cfg: EvalConfig, model: Manifest | str) -> Manifest:
    m = evaluate(storage, cfg, model)
    who = m.stats["model"]
    create_table_artifact(
        key="eval-results",
        table=result_rows(m),
        description=f"Evaluation of {who['url']} ({who['backend']}); details in {m.url}",
    )
    if m.stats["samples"]:
        create_table_artifact(key="eval-samples", table=m.stats["samples"], description="Greedy samples")
    return m


eval_task = stage_task(_eval, "eval", retries=1)
