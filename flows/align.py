"""The preference tuning flow: DPO and a Bradley-Terry reward model on the same preference pairs."""

from __future__ import annotations

from prefect import flow

from tasks.align_steps import dpo_task, reward_model_task
from tasks.config import DPOConfig, RewardModelConfig
from tasks.errors import ForjaInputError
from tasks.manifest import Manifest
from tasks.posttrain import manifest_at
from tasks.storage import Storage


@flow(name="dpo", log_prints=True)
def dpo_flow(
    config: DPOConfig | None = None,
    reward: RewardModelConfig | None = None,
    storage: str = "./forja-store",
    base: Manifest | None = None,
    inputs: list[str] | None = None,
) -> dict[str, Manifest]:
    """Tune `base` (an sft, pretrain or dpo manifest; default: the stage folder in `config.base`) with DPO
    on the pairs of `config.data` (or `inputs`), and train the reward model on the same pairs unless
    `reward.enabled` is off. Returns {"dpo": manifest, "reward_model": manifest}."""
    config, reward = config or DPOConfig(), reward or RewardModelConfig()
    if base is None:
        if not config.base:
            raise ForjaInputError("no model to tune: pass a base manifest or set dpo.base (a stage folder)")
        base = manifest_at(config.base, "dpo.base")
    root = Storage(storage)
    results = {"dpo": dpo_task(root, config, base, None, inputs)}
    if reward.enabled:
        results["reward_model"] = reward_model_task(root, reward, base, config, None, inputs)
    return results
