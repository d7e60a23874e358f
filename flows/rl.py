"""The RL flow: GRPO of a tuned model on prompts with verifiable answers (or a reward model)."""

from __future__ import annotations

from prefect import flow

from tasks.config import RLConfig
from tasks.manifest import Manifest
from tasks.posttrain import manifest_at
from tasks.rl_steps import rl_task
from tasks.storage import Storage


@flow(name="rl", log_prints=True)
def rl_flow(
    config: RLConfig | None = None,
    storage: str = "./forja-store",
    base: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    """GRPO on `base` (an sft, dpo or pretrain manifest; default: the stage folder in `config.base`) with the
    prompts of `config.data` (or `inputs`) and `config.toy`."""
    config = config or RLConfig()
    if base is None:
        if not config.base:
            raise ValueError("rl_flow needs a base manifest or config.base (a stage folder)")
        base = manifest_at(config.base, "rl.base")
    return rl_task(Storage(storage), config, base, None, inputs)
