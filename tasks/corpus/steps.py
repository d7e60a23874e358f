"""The corpus stages as Prefect tasks: each returns its manifest and publishes what a person wants to see."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.config import CorpusConfig
from tasks.corpus.clean import clean
from tasks.corpus.collect import collect
from tasks.corpus.dedup import dedup
from tasks.corpus.detox import detox
from tasks.corpus.stats import measure, render_markdown
from tasks.manifest import Manifest
from tasks.prefect_utils import stage_task
from tasks.storage import Storage


def _collect(
    storage: Storage, cfg: CorpusConfig, inputs: list[str] | None = None, exclude: set[str] | None = None
) -> Manifest:
    m = collect(storage, cfg, inputs, exclude)
    if m.stats.get("problem_samples"):
        create_table_artifact(
            key="corpus-collect-problems",
            table=m.stats["problem_samples"],
            description=f"{m.stats['problems']} unreadable files or records (first 20)",
        )
    return m


def _clean(storage: Storage, cfg: CorpusConfig, collected: Manifest) -> Manifest:
    m = clean(storage, cfg, collected)
    rows = [
        {
            "filter": name,
            "removed": f["removed"],
            "reasons": ", ".join(f"{k}: {v}" for k, v in f["reasons"].items()),
        }
        for name, f in m.stats["filters"].items()
    ]
    create_table_artifact(
        key="corpus-clean-filters", table=rows, description="Documents removed by each filter"
    )
    return m


def _measure(storage: Storage, cfg: CorpusConfig, parts: list[Manifest], history: list[Manifest]) -> Manifest:
    m = measure(storage, cfg, parts, history)
    create_markdown_artifact(
        key="corpus-report",
        markdown=render_markdown(m.stats),
        description="Corpus size, languages and removal funnel",
    )
    create_table_artifact(
        key="corpus-funnel", table=m.stats["funnel"], description="Documents in and out per stage"
    )
    return m


collect_task = stage_task(_collect, "collect")
clean_task = stage_task(_clean, "clean")
dedup_task = stage_task(dedup, "dedup")
detox_task = stage_task(detox, "detox")
stats_task = stage_task(_measure, "stats")
