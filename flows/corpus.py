"""The corpus flow: collect -> clean -> dedup -> detox -> stats, and its nightly incremental refresh."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.config import CorpusConfig
from tasks.corpus import versions
from tasks.corpus.steps import clean_task, collect_task, dedup_task, detox_task, stats_task
from tasks.errors import ForjaInputError
from tasks.manifest import Manifest
from tasks.storage import Storage


@flow(name="corpus", log_prints=True)
def corpus_flow(
    config: CorpusConfig | None = None, storage: str = "./forja-store", inputs: list[str] | None = None
) -> Manifest:
    """Build a corpus from scratch out of `inputs` (default: the recipe's) and publish it as a version."""
    config = config or CorpusConfig()
    store = Storage(storage)
    collected = collect_task(store, config, inputs)
    cleaned = clean_task(store, config, collected)
    deduped = dedup_task(store, config, cleaned)
    final = detox_task(store, config, deduped)
    corpus = stats_task(store, config, [final], [collected, cleaned, deduped, final])
    _check_not_empty(corpus, cleaned)
    version = versions.publish(store, corpus, deduped, [final], collected.config["sources"])
    get_run_logger().info("corpus version %d: %s", version.version, corpus.url)
    return corpus


@flow(name="corpus_refresh", log_prints=True)
def corpus_refresh(
    config: CorpusConfig | None = None, storage: str = "./forja-store", inputs: list[str] | None = None
) -> Manifest:
    """Add only new input to the latest corpus: new documents are deduplicated against everything already in
    it (its MinHash and exact-hash index), then published as the next version."""
    config = config or CorpusConfig()
    store = Storage(storage)
    current = versions.latest(store)
    if current is None:
        return corpus_flow(config, storage, inputs)
    corpus, previous_dedup, parts = versions.load(store, current)
    collected = collect_task(store, config, inputs, exclude=set(current.sources))
    if collected.stats["documents"] == 0:
        get_run_logger().info("nothing new to add; corpus stays at version %d", current.version)
        return corpus
    cleaned = clean_task(store, config, collected)
    deduped = dedup_task(store, config, cleaned, previous=previous_dedup)
    final = detox_task(store, config, deduped)
    corpus = stats_task(store, config, [*parts, final], [collected, cleaned, deduped, final])
    version = versions.publish(
        store, corpus, deduped, [*parts, final], current.sources + collected.config["sources"]
    )
    get_run_logger().info("corpus version %d: %s", version.version, corpus.url)
    return corpus


def _check_not_empty(corpus: Manifest, cleaned: Manifest) -> None:
    """An empty corpus is bad input, said with where the documents went and what to change."""
    if corpus.stats["documents"]:
        return
    funnel = ", ".join(
        f"{r['stage']} {r['documents_in']} -> {r['documents_out']}" for r in corpus.stats["funnel"]
    )
    filters = ", ".join(
        f"{k}: {v['removed']}" for k, v in cleaned.stats.get("filters", {}).items() if v["removed"]
    )
    raise ForjaInputError(
        f"the corpus is empty ({funnel}; removed by clean filters: {filters or 'none'}). "
        f"Removed documents are kept under {cleaned.url}/removed/ for inspection; add input or loosen "
        "corpus.clean.* (e.g. --set corpus.clean.gopher_repetition=false)"
    )
