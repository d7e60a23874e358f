"""RL with rule-based (or learned) rewards as a stage: prompts -> GRPO on a LoRA adapter, in its own process.

The policy starts from the base stage's merged export (an sft, dpo or pretrain stage) with a fresh adapter;
the adapter disabled is the KL reference, so the reference is exactly the model the stage started from.
The key hashes the settings, the base's and tokenizer's keys, the prompt files' digests (not their paths)
and the reward model's key (a stage) or files' digests (a plain folder): the same inputs find the finished
run. Writes `data/` (train/val prompts, `skipped.json`), `adapter/`, `export/` (merged, transformers-
loadable), `checkpoints/`, `logs/`, `metrics.json`, `samples.json` (held-out answers per evaluation),
`curves.png` (reward, accuracy, KL, loss), `loss.png`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks import rl_data
from tasks.config import PLACEMENT_FIELDS, RLConfig
from tasks.errors import ForjaInputError
from tasks.launcher import cache_root, local_copy, run_training
from tasks.manifest import Manifest, StageDir, code_version, run_stage
from tasks.posttrain import (
    FRAME_MODULES,
    check_training,
    data_digests,
    folder_files,
    is_stage,
    local_folder,
    local_models,
    manifest_at,
    policy_spec,
    run_report,
    storage_of,
    tokenizer_of,
)
from tasks.storage import Storage

STAGE = "rl"
ENTRY = "models.grpo"
MODEL_MODULES = (
    "models.grpo",
    "models.grpo_data",
    "models.grpo_loss",
    "models.rewards",
    "models.answers",
    *FRAME_MODULES,
)
TRAINER_FIELDS = {
    "group_size",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "clip_eps",
    "kl_beta",
    "updates_per_batch",
    "forward_batch",
    "val_every",
    "ckpt_every",
    "seed",
} | PLACEMENT_FIELDS
CURVE_KEYS = ("train/reward", "train/accuracy", "train/kl", "train/loss", "val/reward", "val/accuracy")
MAX_CURVE_ROWS = 300


def check_rewards(cfg: RLConfig) -> None:
    """Unknown reward names and unimportable custom rewards fail before anything runs."""
    from models.rewards import REGISTRY, import_object

    for r in cfg.rewards:
        if r.name in REGISTRY:
            continue
        if ":" not in r.name:
            raise ForjaInputError(
                f"rl.rewards: unknown reward {r.name!r}; choose among {sorted(REGISTRY)} "
                "or give 'package.module:function'"
            )
        try:
            import_object(r.name)
        except ValueError as e:
            raise ForjaInputError(f"rl.rewards: {e}") from None


def reward_sources(cfg: RLConfig) -> tuple[dict[str, Manifest], dict[str, list]]:
    """(stages the rewards read, for the lineage; digests of plain folders they read, for the key)."""
    stages, digests = {}, {}
    for r in cfg.rewards:
        if not r.path:
            continue
        setting = f"rl.rewards[{r.name}].path"
        if is_stage(r.path):
            stages[r.name] = manifest_at(r.path, setting)
        else:
            digests[r.name] = data_digests(folder_files(r.path, setting, "a reward model folder"))
    return stages, digests


def curve_rows(history: list[dict]) -> list[dict]:
    """Step and the headline values of each logged row (at most MAX_CURVE_ROWS training rows)."""
    rows = [
        {"step": int(r["step"]), **{k: r[k] for k in CURVE_KEYS if k in r}}
        for r in history
        if any(k in r for k in CURVE_KEYS)
    ]
    train = [r for r in rows if "train/reward" in r]
    keep = {id(r) for r in train[:: max(1, len(train) // MAX_CURVE_ROWS)]}
    return [r for r in rows if "train/reward" not in r or id(r) in keep]


def rl(
    storage: Storage,
    cfg: RLConfig,
    base: Manifest,
    tokenizer: Manifest | None = None,
    inputs: list[str] | None = None,
) -> Manifest:
    """GRPO on `base` (an sft, dpo or pretrain stage) with the prompts of `cfg.data` (or `inputs`) and the
    toy problems of `cfg.toy`, rewarded by `cfg.rewards`."""
    check_rewards(cfg)
    tokenizer = tokenizer or tokenizer_of(base)
    sources = list(inputs or cfg.data)
    files = rl_data.prompt_files(sources) if sources else []
    reward_stages, reward_digests = reward_sources(cfg)
    keyed = {
        **cfg.model_dump(mode="json", exclude={"launcher", "data", "base", "rewards"}),
        "rewards": [
            {**r.model_dump(mode="json", exclude={"path"}), "files": reward_digests.get(r.name)}
            for r in cfg.rewards
        ],
        "data": data_digests(files),
    }

    def build(out: StageDir) -> dict:
        check_training("rl", cfg)
        cache = cache_root()
        models = local_models(base, tokenizer, cache)
        template = models.template()
        rewards = []
        for r in cfg.rewards:
            entry = {"name": r.name, "weight": r.weight, **r.options}
            if r.path:
                stage = reward_stages.get(r.name)
                entry["path"] = str(
                    local_copy(storage_of(stage), stage.stage, stage.key, cache)
                    if stage is not None
                    else local_folder(r.path, cache)
                )
            rewards.append(entry)
        data: dict = {}

        def spec(run_dir: Path) -> dict:
            data.update(rl_data.prepare_prompts(files, cfg, template, models.context, run_dir / "data"))
            return policy_spec(
                run_dir,
                models,
                cfg,
                TRAINER_FIELDS,
                micro_batch=cfg.prompts_per_step,
                max_steps=cfg.steps,
                rewards=rewards,
            )

        run_dir = run_training(storage, out, ENTRY, spec, cfg.launcher, cfg.num_nodes, cfg.devices)
        report, history = run_report(run_dir, out, base, "val/reward")
        return {
            **{k: v for k, v in report.items() if not k.startswith("val_loss")},
            "data": data,
            "rewards": [{"name": r.name, "weight": r.weight} for r in cfg.rewards],
            "curve": curve_rows(history),
            "curves": out.url("curves.png"),
        }

    version = code_version(sys.modules[__name__], rl_data, *MODEL_MODULES)
    lineage = {
        base.stage: base,
        "tokenizer": tokenizer,
        **{f"reward:{n}": m for n, m in reward_stages.items()},
    }
    return run_stage(storage, STAGE, keyed, lineage, version, build)
