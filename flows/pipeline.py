"""The whole pipeline as one flow: corpus -> tokenizer -> shards -> pretrain -> eval -> sft -> dpo (+ reward
model) -> rl -> eval, each stage a cached subflow, ending with the report card (tasks/report_steps.py)
about the artifacts of whatever stages ran.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.align import dpo_flow
from flows.corpus import corpus_flow
from flows.eval import eval_flow
from flows.finetune import sft_flow
from flows.pretrain import pretrain_flow
from flows.rl import rl_flow
from flows.tokenize import tokenizer_flow
from tasks.config import ForjaConfig
from tasks.manifest import Manifest
from tasks.report_steps import report_task
from tasks.storage import Storage

Stage = Literal["corpus", "tokenizer", "pretrain", "eval", "sft", "dpo", "rl"]


@flow(name="pipeline", log_prints=True)
def pipeline(config: ForjaConfig | None = None, until: Stage | None = None) -> dict[str, Manifest]:
    """Every stage in order; `until` stops after that stage. The result maps each stage to its manifest
    (`eval`: the pretrained model's evaluation, `final_eval`: the RL model's), plus `report`: the report
    card of this run's artifacts."""
    config = config or ForjaConfig()
    results = _stages(config, until)
    results["report"] = report_task(Storage(config.storage), results)
    return results


def _stages(config: ForjaConfig, until: Stage | None) -> dict[str, Manifest]:
    root = config.storage
    results = {"corpus": corpus_flow(config.corpus, root)}
    if until == "corpus":
        return results
    results.update(tokenizer_flow(config.tokenizer, config.shards, root, results["corpus"]))
    if until == "tokenizer":
        return results
    results["pretrain"] = pretrain_flow(config.pretrain, root, results["tokenizer"], results["shards"])
    if until == "pretrain":
        return results
    results["eval"] = eval_flow(config.eval, root, results["pretrain"])
    if until == "eval":
        return results
    results["sft"] = sft_flow(config.sft, root, results["pretrain"])
    if until == "sft":
        return results
    results.update(dpo_flow(config.dpo, config.reward_model, root, results["sft"]))
    if until == "dpo":
        return results
    results["rl"] = rl_flow(config.rl, root, results["dpo"])
    if until == "rl":
        return results
    results["final_eval"] = eval_flow(config.eval, root, results["rl"])
    return results
