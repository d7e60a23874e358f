"""The pretraining flow: train the decoder on the token shards in its own process."""

from __future__ import annotations

from prefect import flow

from tasks.config import PretrainConfig
from tasks.manifest import Manifest
from tasks.pretrain_steps import pretrain_task
from tasks.storage import Storage


@flow(name="pretrain", log_prints=True)
def pretrain_flow(
    config: PretrainConfig | None = None,
    storage: str = "./forja-store",
    tokenizer: Manifest | None = None,
    shards: Manifest | None = None,
) -> Manifest:
    """Pretrain on `shards` (built by the tokenizer flow) and export a transformers-loadable model."""
    config = config or PretrainConfig()
    return pretrain_task(Storage(storage), config, tokenizer, shards)
