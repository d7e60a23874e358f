"""The whole pipeline as one flow. Stages join it as they are built: corpus, tokenizer, pretraining.

Whatever stages ran, the pipeline ends with the report card (tasks/report_steps.py) about their artifacts.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.corpus import corpus_flow
from flows.pretrain import pretrain_flow
from flows.tokenize import tokenizer_flow
from tasks.config import ForjaConfig
from tasks.manifest import Manifest
from tasks.report_steps import report_task
from tasks.storage import Storage

Stage = Literal["corpus", "tokenizer", "pretrain"]


@flow(name="pipeline", log_prints=True)
def pipeline(config: ForjaConfig | None = None, until: Stage | None = None) -> dict[str, Manifest]:
    """Every stage in order, each a cached subflow; `until` stops after that stage. The result maps each
    stage to its manifest, plus `report`: the report card of this run's artifacts."""
    config = config or ForjaConfig()
    results = _stages(config, until)
    results["report"] = report_task(Storage(config.storage), results)
    return results


def _stages(config: ForjaConfig, until: Stage | None) -> dict[str, Manifest]:
    results = {"corpus": corpus_flow(config.corpus, config.storage)}
    if until == "corpus":
        return results
    results.update(tokenizer_flow(config.tokenizer, config.shards, config.storage, results["corpus"]))
    if until == "tokenizer":
        return results
    results["pretrain"] = pretrain_flow(
        config.pretrain, config.storage, results["tokenizer"], results["shards"]
    )
    return results
