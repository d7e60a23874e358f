"""Preference tuning as stages: pair files -> encoded pairs -> training in its own process.

- `dpo`: DPO with a fresh LoRA adapter on the base's merged export; the reference is that export with the
  adapter disabled. Writes what SFT writes (`adapter/`, `export/`, `metrics.json`, `loss.png`, ...) plus
  `curves.png` (loss, reward margin, preference accuracy) and `data/skipped.json`.
- `reward_model`: a Bradley-Terry reward model on the same pairs; writes `export/`, `reward_head.safetensors`,
  `reward.json` (models.reward.load_reward_model reads the folder) and the same curves.

Both keys hash the settings, the base's and tokenizer's keys and the digests of the pair files: the same
base, data and settings find the finished run and do no work. The manifest's inputs name the base stage
(an SFT stage's key, typically) and the tokenizer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from tasks import chat_data, preference_data
from tasks.config import DPOConfig, PairDataSection, PreferenceTraining, RewardModelConfig
from tasks.launcher import cache_root, run_training
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.posttrain import (
    FRAME_MODULES,
    check_training,
    data_digests,
    local_models,
    policy_spec,
    run_report,
    tokenizer_of,
)
from tasks.sft import TRAINER_FIELDS
from tasks.storage import Storage

COMMON_MODULES = (
    "models.pair_data",
    "models.preference_loss",
    "models.curves",
    "models.sft_data",
    *FRAME_MODULES,
)
PAIR_FIELDS = set(PairDataSection.model_fields) - {"data"}


def _train_on_pairs(
    storage: Storage,
    stage: str,
    entry: str,
    cfg: PreferenceTraining,
    pairs: PairDataSection,
    base: Manifest,
    tokenizer: Manifest | None,
    inputs: list[str] | None,
    spec_extra: Callable[[], dict],
) -> Manifest:
    """The frame both stages share: key, local copies of base and tokenizer, pairs, launch, stats."""
    tokenizer = tokenizer or tokenizer_of(base)
    files = chat_data.expand_inputs(list(inputs or pairs.data))
    keyed = {
        **cfg.model_dump(mode="json", exclude={"launcher", "data", "base", "enabled"}),
        **pairs.model_dump(mode="json", include=PAIR_FIELDS),
        "data": data_digests(files),
    }

    def build(out: StageDir) -> dict:
        check_training(stage, cfg)
        models = local_models(base, tokenizer, cache_root())
        template, context = models.template(), models.context
        max_length = min(pairs.max_length or context, context)
        data: dict = {}

        def spec(run_dir: Path) -> dict:
            data.update(
                preference_data.prepare_pairs(
                    files, pairs.on_bad_input, pairs.val_fraction, template, max_length, run_dir / "data"
                )
            )
            return policy_spec(run_dir, models, cfg, TRAINER_FIELDS, pad_id=template.pad_id, **spec_extra())

        run_dir = run_training(storage, out, entry, spec, cfg.launcher, cfg.num_nodes, cfg.devices)
        report, _ = run_report(run_dir, out, base, "val/loss")
        return {**report, "data": data, "curves": out.url("curves.png")}

    # models.reward builds on models.dpo: both are hashed for the reward model
    modules = (entry, "models.dpo") if entry != "models.dpo" else (entry,)
    version = code_version(sys.modules[__name__], chat_data, preference_data, *modules, *COMMON_MODULES)
    return run_stage(storage, stage, keyed, {base.stage: base, "tokenizer": tokenizer}, version, build)


def dpo(
    storage: Storage,
    cfg: DPOConfig,
    base: Manifest,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    """DPO of `base` (an sft, pretrain or dpo stage) on preference pairs; `inputs` replace `cfg.data`."""

    def extra() -> dict:
        return {
            "beta": cfg.beta,
            "label_smoothing": cfg.label_smoothing,
            "samples": {"prompts": cfg.sample_prompts, "max_new_tokens": cfg.sample_tokens},
        }

    return _train_on_pairs(storage, "dpo", "models.dpo", cfg, cfg, base, tokenizer, inputs, extra)


def reward_model(
    storage: Storage,
    cfg: RewardModelConfig,
    base: Manifest,
    pairs: PairDataSection,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    """A Bradley-Terry reward model on `base` (its decoder plus a scalar head), trained on the pairs of
    `pairs.data` (or `inputs`) with `pairs`' reading settings: the same pairs DPO uses."""

    def extra() -> dict:
        return {"center_coef": cfg.center_coef}

    stage, entry = "reward_model", "models.reward"
    return _train_on_pairs(storage, stage, entry, cfg, pairs, base, tokenizer, inputs, extra)
