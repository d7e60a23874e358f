"""Typed configuration: the recipe in `configs/*.yaml`, validated by pydantic.

The same models are the flows' parameters, so the Prefect UI shows them as typed forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import ForjaInputError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectConfig(Strict):
    inputs: list[str] = Field(
        default_factory=lambda: ["data/sample"],
        description="Files, folders, WARC/WET files, URL lists (*.urls), http(s) URLs or s3:// prefixes.",
    )
    on_bad_input: Literal["skip", "fail"] = Field(
        "skip", description="skip: count and record unreadable files/records; fail: stop at the first one."
    )
    min_chars: int = Field(1, ge=1, description="Documents shorter than this are not collected.")
    url_timeout_s: float = Field(10.0, gt=0)
    url_retries: int = Field(3, ge=0, description="Retries on timeouts and 5xx answers, with backoff.")
    url_backoff_s: float = Field(0.5, ge=0)
    per_host_delay_s: float = Field(1.0, ge=0, description="Pause between two requests to the same host.")
    max_page_bytes: int = Field(5_000_000, gt=0)
    user_agent: str = "ForjaBot/0.1"


class CleanConfig(Strict):
    normalize_unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    redact_pii: bool = True
    min_chars: int = Field(200, ge=0)
    max_chars: int = Field(2_000_000, gt=0)
    gopher_repetition: bool = True
    gopher_quality: bool = True
    c4_quality: bool = True
    c4_min_sentences: int = Field(
        5, ge=-1, description="C4's rule is 5; short encyclopedic paragraphs have 3-4."
    )
    fineweb_quality: bool = True
    samples_per_filter: int = Field(5, ge=0, description="Removed documents kept in the manifest per filter.")


class DedupConfig(Strict):
    exact: bool = True
    near: bool = True
    n_grams: int = Field(5, ge=1, description="Word n-grams (shingles) per document.")
    # P(pair caught) = 1 - (1 - s^r)^b. With b=20 buckets of r=7 hashes: 99.1 % at Jaccard 0.8, 14 % at 0.5,
    # 0.4 % at 0.3 (datatrove's default 14 x 8 catches 92 % at 0.8).
    num_buckets: int = Field(20, ge=1)
    hashes_per_bucket: int = Field(7, ge=1)
    seed: int = 1
    word_tokenizer: Literal["fast", "spacy"] = Field(
        "fast", description="fast: split the normalised text on spaces; spacy: datatrove's default."
    )


class DetoxConfig(Strict):
    enabled: bool = True
    scorer: Literal["wordlist", "classifier", "any"] = "wordlist"
    wordlist_threshold: float = Field(
        0.02, gt=0, description="Drop when this fraction of a document's words is on the language's list."
    )
    classifier_threshold: float = Field(0.5, gt=0, lt=1)


class StatsConfig(Strict):
    bytes_per_token: float = Field(4.0, gt=0, description="For the size estimate (30 T tokens ~ 109 TiB).")


class CorpusConfig(Strict):
    collect: CollectConfig = Field(default_factory=CollectConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    detox: DetoxConfig = Field(default_factory=DetoxConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    tasks: int = Field(2, ge=1, description="Shards each data step is split into.")
    workers: int = Field(2, ge=1, description="Processes that run them.")


CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


class TokenizerConfig(Strict):
    model_type: Literal["bpe", "unigram", "char"] = "bpe"
    vocab_size: int = Field(4096, ge=64, description="Includes the special tokens and the 256 byte pieces.")
    character_coverage: float = Field(
        0.9995,
        gt=0,
        le=1,
        description="Share of characters with a piece of their own; the rest fall back to bytes.",
    )
    byte_fallback: bool = Field(True, description="Unknown characters become UTF-8 bytes: no <unk> ever.")
    split_digits: bool = True
    special_tokens: list[str] = Field(default_factory=lambda: list(CHAT_TOKENS))
    max_sentences: int = Field(
        2_000_000, ge=1000, description="Lines sampled for training: bounds memory on large corpora."
    )
    max_line_bytes: int = Field(
        1 << 16, ge=1024, description="Longer lines are cut into pieces of this size."
    )
    threads: int = Field(2, ge=1)
    val_fraction: float = Field(
        0.01, ge=0, lt=0.5, description="Documents held out (by id hash) from training and sharded as val."
    )
    seed: int = 0


class ShardsConfig(Strict):
    tasks: int = Field(2, ge=1, description="Shards per split (one per process).")
    workers: int = Field(2, ge=1)
    batch_docs: int = Field(256, ge=1, description="Documents encoded per call.")


class Placement(Strict):
    """Where a training stage runs and how it is launched: the same fields for every trainer."""

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = Field(1, ge=1, description="Processes (GPUs) per node.")
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp"] = "auto"
    precision: str = Field("auto", description="auto: bf16-mixed on a GPU that has it, else 32-true.")
    launcher: Literal["lightning", "torchrun"] = Field(
        "lightning", description="lightning: one command that spawns its local ranks; torchrun: TorchElastic."
    )


# Passed to the trainer as they are (the launcher only decides how the trainer process starts)
PLACEMENT_FIELDS = frozenset(Placement.model_fields) - {"launcher"}


class PretrainConfig(Placement):
    model: dict[str, Any] = Field(
        default_factory=lambda: {"arch": "gpt2", "n_layer": 4, "n_head": 4, "d_model": 128, "context": 128},
        description="models.model.ModelConfig fields; vocab_size comes from the tokenizer.",
    )
    optim: dict[str, Any] = Field(
        default_factory=lambda: {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 50, "weight_decay": 0.1},
        description="models.lightning.OptimConfig fields (AdamW, warmup + cosine).",
    )
    micro_batch: int = Field(12, ge=1)
    accumulate: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_steps: int = Field(300, ge=1)
    val_every: int = Field(100, ge=1)
    val_windows: int = Field(100, ge=1)
    ckpt_every: int = Field(100, ge=1)
    seed: int = 1337
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    compile: bool = False
    peak_flops: float | None = Field(
        None, description="Accelerator peak FLOP/s, for MFU (e.g. 989e12 for H100 bf16)."
    )


LoraTarget = Literal["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]


class LoraSection(Strict):
    r: int = Field(8, ge=1, description="Rank of the update matrices.")
    alpha: float = Field(16.0, gt=0, description="The update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[LoraTarget] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        min_length=1,
        description="Linear layers that get an adapter (same names in gpt2 and llama; gate_proj: llama).",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Whole modules trained and saved with the adapter, by name suffix ('norm': every norm).",
    )


class SFTConfig(Placement):
    data: list[str] = Field(
        default_factory=lambda: ["data/sft"],
        description="Chat (messages / ShareGPT) and instruction files, .json or .jsonl, or folders of them.",
    )
    on_bad_input: Literal["skip", "fail"] = Field(
        "skip", description="skip: count and report bad records; fail: stop at the first one."
    )
    base: str | None = Field(
        None,
        description="Stage folder (pretrain or sft) to fine-tune; none: the recipe's pretrained model.",
    )
    max_length: int | None = Field(
        None, ge=8, description="Tokens per example (longer ones are cut); none: the base model's context."
    )
    val_fraction: float = Field(
        0.05, ge=0, lt=0.5, description="Conversations held out (by content hash) for validation."
    )
    lora: LoraSection = Field(default_factory=LoraSection)
    optim: dict[str, Any] = Field(
        default_factory=lambda: {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 20, "weight_decay": 0.0},
        description="models.lightning.OptimConfig fields (AdamW over the adapter, warmup + cosine).",
    )
    micro_batch: int = Field(8, ge=1, description="Conversations per micro-batch (padded, not packed).")
    accumulate: int = Field(1, ge=1)
    max_steps: int = Field(200, ge=1)
    val_every: int = Field(50, ge=1)
    ckpt_every: int = Field(100, ge=1)
    seed: int = 1234
    sample_prompts: list[str] = Field(
        default_factory=lambda: [
            "What is your name?",
            "¿Cómo te llamas?",
            "Tell me a joke.",
            "¿Qué es un ñu?",
        ],
        description="User messages answered (greedy) at each evaluation.",
    )
    sample_tokens: int = Field(48, ge=1)


class PairDataSection(Strict):
    """Preference pairs: what DPO and the reward model read (the same files for both)."""

    data: list[str] = Field(
        default_factory=lambda: ["data/preference"],
        description="Pair files (.json/.jsonl, gzipped or not) or folders: {prompt, chosen, rejected}, "
        "HH-RLHF transcripts, or pairs collected with `forja feedback` "
        "(<storage>/feedback/<collection>/pairs.jsonl).",
    )
    on_bad_input: Literal["skip", "fail"] = Field(
        "skip", description="skip: count and report bad pairs; fail: stop at the first one (ties: skipped)."
    )
    max_length: int | None = Field(
        None, ge=8, description="Tokens per prompt + answer (longer answers are cut); none: the context."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="Pairs held out (by content hash) for the preference accuracy."
    )


class PreferenceTraining(Placement):
    lora: LoraSection = Field(default_factory=LoraSection)
    optim: dict[str, Any] = Field(
        default_factory=lambda: {"lr": 5e-4, "min_lr": 5e-5, "warmup_steps": 10, "weight_decay": 0.0},
        description="models.lightning.OptimConfig fields (AdamW over the adapter, warmup + cosine).",
    )
    micro_batch: int = Field(8, ge=1, description="Pairs per micro-batch (2x the sequences).")
    accumulate: int = Field(1, ge=1)
    max_steps: int = Field(100, ge=1)
    val_every: int = Field(50, ge=1)
    ckpt_every: int = Field(100, ge=1)
    seed: int = 1234


class DPOConfig(PairDataSection, PreferenceTraining):
    base: str | None = Field(
        None,
        description="Stage folder (sft, pretrain or dpo) whose model is tuned and is the reference; "
        "none: the recipe's SFT model.",
    )
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference model.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Probability that a label is wrong (conservative DPO); 0: plain DPO."
    )
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["Tell me a joke.", "¿Qué es un ñu?"],
        description="User messages answered (greedy) at each evaluation.",
    )
    sample_tokens: int = Field(48, ge=1)


class RewardModelConfig(PreferenceTraining):
    enabled: bool = Field(True, description="Train the reward model next to DPO, on the same pairs.")
    center_coef: float = Field(
        0.01, ge=0, description="Pulls the rewards' mean towards 0 (the loss itself sees differences only)."
    )


class FeedbackConfig(Strict):
    prompts: list[str] = Field(
        default_factory=lambda: ["data/feedback/prompts.jsonl"],
        description="Prompt files: .jsonl/.json records with 'prompt' (text or messages), .txt one per line.",
    )
    model: str | None = Field(
        None, description="Stage folder (sft, dpo or pretrain) that answers; none: the recipe's SFT model."
    )
    adapter: str | None = Field(
        None, description="A peft adapter folder on the model's base instead of the stage's own adapter."
    )
    collection: str = Field(
        "default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="<storage>/feedback/<collection>/"
    )
    annotator: str = Field("", description="Pre-filled annotator name in the form.")
    max_prompts: int | None = Field(None, ge=1, description="Questions per session; none: every prompt.")
    skip_answered: bool = Field(
        True, description="Leave out questions this collection already holds a choice for."
    )
    batch_size: int = Field(5, ge=1, description="Choices written per atomic append to pairs.jsonl.")
    temperature: float = Field(0.9, gt=0, description="Sampling temperature of the two answers.")
    top_k: int | None = Field(50, ge=1)
    top_p: float | None = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    tries: int = Field(4, ge=1, description="Samples drawn per prompt to get two different answers.")
    seed: int = 0
    timeout_s: int = Field(
        3600, ge=1, description="How long a question waits for its answer before the run fails."
    )
    poll_s: float = Field(5.0, gt=0, description="How often the waiting run checks for the answer.")


class RewardSection(Strict):
    name: str = Field(
        description="answer (exact final answer), format (ends with '#### <number>'), reward_model, "
        "or 'package.module:function'."
    )
    weight: float = Field(1.0, description="The total reward is the weighted sum.")
    path: str | None = Field(
        None, description="reward_model: its stage folder (forja-store/reward_model/<key>) or model folder."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the reward's factory, e.g. {lang: es} for answer."
    )


class ToyTaskSection(Strict):
    count: int = Field(0, ge=0, description="Two-number additions generated (0: none), half per language.")
    langs: list[Literal["en", "es"]] = Field(default_factory=lambda: ["en", "es"], min_length=1)
    digits: int = Field(2, ge=1, le=6, description="Digits of each operand.")
    seed: int = 0


class RLConfig(Placement):
    data: list[str] = Field(
        default_factory=lambda: ["data/rl/gsm8k"],
        description="Prompt files or folders: JSONL {prompt|question, answer} (GSM8K as is), "
        "TSV question<TAB>answer (MGSM), .json lists.",
    )
    toy: ToyTaskSection = Field(default_factory=ToyTaskSection, description="Generated addition problems.")
    on_bad_input: Literal["skip", "fail"] = Field(
        "skip", description="skip: count and report bad records; fail: stop at the first one."
    )
    base: str | None = Field(
        None,
        description="Stage folder (sft, dpo or pretrain) whose export is the policy's start and the KL "
        "reference; none: the recipe's SFT model.",
    )
    system: str | None = Field(None, description="System message before every prompt.")
    prompt_template: dict[str, str] = Field(
        default_factory=lambda: {"en": "{question}", "es": "{question}"},
        description="User message per language; {question} is replaced (instructions can go here).",
    )
    val_fraction: float = Field(0.1, ge=0, lt=0.5, description="Prompts held out (by content hash).")
    max_val_prompts: int = Field(200, ge=1, description="Held-out prompts answered at each evaluation.")
    rewards: list[RewardSection] = Field(
        default_factory=lambda: [RewardSection(name="answer"), RewardSection(name="format", weight=0.1)],
        min_length=1,
    )
    group_size: int = Field(8, ge=2, description="Completions sampled per prompt (G).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per step (x G sequences).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1, description="Longest completion; longer ones are cut.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip of the probability ratio.")
    kl_beta: float = Field(0.04, ge=0, description="Weight of the k3 KL to the reference (0: none).")
    updates_per_batch: int = Field(1, ge=1, description="Optimiser steps on each batch of completions.")
    steps: int = Field(100, ge=1, description="Batches of prompts (optimiser steps x updates_per_batch).")
    lora: LoraSection = Field(default_factory=lambda: LoraSection(dropout=0.0))
    optim: dict[str, Any] = Field(
        default_factory=lambda: {"lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 10, "weight_decay": 0.0},
        description="models.lightning.OptimConfig fields (AdamW over the adapter, warmup + cosine).",
    )
    forward_batch: int = Field(64, ge=1, description="Sequences per forward pass (memory only).")
    val_every: int = Field(25, ge=1, description="Steps between held-out evaluations.")
    ckpt_every: int = Field(50, ge=1)
    seed: int = 1234

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if missing := sorted(k for k, t in self.prompt_template.items() if "{question}" not in t):
            raise ValueError(f"rl.prompt_template needs {{question}} in {missing}")
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"rl.rewards lists a reward twice: {names}")
        if any(r.name == "reward_model" and not r.path for r in self.rewards):
            raise ValueError("rl.rewards: reward_model needs path (its stage folder)")
        return self


EVAL_TASKS = ("bpb", "hellaswag", "gsm8k", "mgsm_en", "mgsm_es", "samples")

SAMPLE_PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "Elizabeth looked at Mr. Darcy and said",
    "The three most important things to know about learning a new language are",
    "Érase una vez, en un pueblo pequeño de la montaña, un niño llamado Íñigo",
    "¿Qué es la inteligencia artificial? Es",
    "¡Qué día tan bonito! Mañana por la mañana, la señora Núñez",
]


class EvalConfig(Strict):
    tasks: list[str] = Field(
        default_factory=lambda: list(EVAL_TASKS),
        description="Any of bpb, hellaswag, gsm8k, samples and mgsm_<lang> for each language in eval.mgsm.",
    )
    limit: int | None = Field(
        None, ge=1, description="At most this many items per task (bpb: windows per text); none: all."
    )
    backend: Literal["auto", "forja", "transformers"] = Field(
        "auto", description="auto: Forja's Decoder for a Forja stage or checkpoint, transformers otherwise."
    )
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass (does not change results).")
    device: str = Field("auto", description="auto: cuda when available, else cpu; or any torch device.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU that has it, else float32."
    )
    bpb_texts: list[str] = Field(
        default_factory=lambda: ["data/eval/bpb/en.txt", "data/eval/bpb/es.txt"],
        description="Held-out text files (one document each) for bits per byte.",
    )
    bpb_window: int = Field(1024, ge=8, description="Tokens per window: the model's context, at most this.")
    hellaswag: str = Field("data/eval/hellaswag/val-400.txt", description="6-line text or JSONL, .bz2 ok.")
    gsm8k: str = Field("data/eval/gsm8k/test-300.jsonl", description="GSM8K JSONL (question, answer).")
    mgsm: dict[str, str] = Field(
        default_factory=lambda: {"en": "data/eval/mgsm/mgsm_en.tsv", "es": "data/eval/mgsm/mgsm_es.tsv"},
        description="MGSM TSV (question<TAB>answer) per language.",
    )
    math_prompt: dict[str, str] = Field(
        default_factory=lambda: {
            "en": "Question: {question}\nAnswer:",
            "es": "Pregunta: {question}\nRespuesta:",
        },
        description="Prompt per language; {question} is replaced. Few-shot examples can go in the text.",
    )
    max_new_tokens: int = Field(256, ge=1, description="Longest math answer (at most half the context).")
    stop: list[str] = Field(
        default_factory=lambda: ["\n\n", "Question:", "Pregunta:"],
        description="A math answer ends at the first of these (or at EOS).",
    )
    prompts: list[str] = Field(
        default_factory=lambda: list(SAMPLE_PROMPTS), description="Sample generations (greedy)."
    )
    sample_tokens: int = Field(48, ge=1, description="Tokens generated per sample prompt.")

    @model_validator(mode="after")
    def _known_tasks(self) -> EvalConfig:
        known = {"bpb", "hellaswag", "gsm8k", "samples"} | {f"mgsm_{lang}" for lang in self.mgsm}
        unknown = [t for t in self.tasks if t not in known]
        if unknown:
            raise ValueError(f"eval.tasks has unknown tasks {unknown}; known: {sorted(known)}")
        langs = {t.removeprefix("mgsm_") for t in self.tasks if t.startswith("mgsm_")}
        langs |= {"en"} if "gsm8k" in self.tasks else set()
        if missing := sorted(lang for lang in langs if "{question}" not in self.math_prompt.get(lang, "")):
            raise ValueError(f"eval.math_prompt needs a template with {{question}} for {missing}")
        return self


class ForjaConfig(Strict):
    storage: str = Field("./forja-store", description="Storage root: a folder or s3://bucket/prefix.")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def _set_path(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ForjaInputError(f"--set {dotted}={raw}: '{k}' is a value, not a section")
    node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> ForjaConfig:
    """Read a recipe, apply `key.path=value` overrides, validate. Errors name the file and key."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ForjaInputError(f"config file {path} not found; pass --config configs/tiny.yaml") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ForjaInputError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(tree, dict):
            raise ForjaInputError(f"{path}: the top level must be a mapping of sections")
    for item in sets:
        if "=" not in item:
            raise ForjaInputError(
                f"--set {item!r}: expected key.path=value, e.g. corpus.dedup.num_buckets=20"
            )
        dotted, raw = item.split("=", 1)
        _set_path(tree, dotted.strip(), raw.strip())
    try:
        return ForjaConfig.model_validate(tree)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ForjaInputError(f"{source}: invalid configuration: {problems}") from None
