"""The whole pipeline as one flow. Stages join it as they are built: today, the corpus."""

from __future__ import annotations

from prefect import flow

from flows.corpus import corpus_flow
from tasks.config import ForjaConfig
from tasks.manifest import Manifest


@flow(name="pipeline", log_prints=True)
def pipeline(config: ForjaConfig | None = None) -> dict[str, Manifest]:
    config = config or ForjaConfig()
    corpus = corpus_flow(config.corpus, config.storage)
    return {"corpus": corpus}
