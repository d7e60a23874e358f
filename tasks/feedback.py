"""Human feedback: two sampled answers per prompt, a person's choice between them, stored as a pair.

- `read_prompts`: prompt files (`.jsonl`/`.json` records with `prompt` as text or messages, or `messages`;
  `.txt`, one prompt per line), bad records counted with their reason and location.
- `candidates`: a cached stage that samples two different answers per prompt from a policy (a stage's base
  export plus its LoRA adapter, or plain export) and writes `candidates.jsonl`.
- `PreferenceForm` and `question_form`: the typed form a paused flow run shows in the Prefect UI.
- `PairLog`: the collection `<root>/feedback/<collection>/pairs.jsonl`, appended one batch at a time under
  the storage root's lock and rewritten atomically: readers never see half a batch, and two sessions on
  the same collection never lose each other's answers.

Each stored choice keeps the prompt, both answers as shown (A and B), the chosen and rejected answer (none
for a tie), the annotator, the comment, the UTC time and the model's lineage. Ties are kept and are
skipped by the pair readers (tasks/preference_data.py): they prefer neither answer.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal

from prefect.input import RunInput
from pydantic import Field

from tasks import chat_data
from tasks.chat_data import BadRecord, Skip
from tasks.config import FeedbackConfig
from tasks.errors import ForjaInputError
from tasks.launcher import cache_root, local_copy
from tasks.locks import exclusive
from tasks.manifest import Manifest, StageDir, canonical_json, code_version, read_manifest, run_stage
from tasks.posttrain import data_digests, folder_files, local_folder, storage_of, tokenizer_of
from tasks.storage import Storage, open_url

STAGE = "candidates"
PAIRS = "pairs.jsonl"
PROMPT_FIX = (
    "a prompt file is .txt (one prompt per line) or .jsonl/.json records {'prompt': 'text'} or "
    "{'messages': [{'role': 'user', 'content': ...}]} ending with a user turn"
)


# ---- prompts -----------------------------------------------------------------------------------------


@dataclass
class Prompt:
    messages: list[dict[str, str]]  # the conversation so far, ending with a user turn
    file: str
    record: str

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class PromptRead:
    prompts: list[Prompt] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason.split(":", 1)[0] for s in self.skipped).most_common())


def to_prompt(record) -> list[dict[str, str]]:
    from models.chat import marker_in

    if isinstance(record, str):
        messages = [{"role": "user", "content": record}]
    elif isinstance(record, dict) and isinstance(record.get("prompt"), str):
        messages = [{"role": "user", "content": record["prompt"]}]
    elif isinstance(record, dict) and isinstance(record.get("prompt") or record.get("messages"), list):
        raw = record.get("prompt") or record.get("messages")
        messages = []
        for i, m in enumerate(raw):
            role = chat_data.CHAT_ROLES.get(str(m.get("role")).lower()) if isinstance(m, dict) else None
            if role is None or not isinstance(m.get("content"), str):
                raise BadRecord(f"bad message: turn {i + 1} needs a known 'role' and text 'content'")
            messages.append({"role": role, "content": m["content"]})
    else:
        raise BadRecord("unknown format: no prompt or messages field")
    if not messages or messages[-1]["role"] != "user":
        raise BadRecord("no question: the prompt must end with a user turn")
    if not messages[-1]["content"].strip():
        raise BadRecord("empty prompt: the user turn has no text")
    for m in messages:
        if (marker := marker_in(m["content"])) is not None:
            raise BadRecord(f"chat marker in text: {marker}")
    return messages


def prompt_files(inputs: list[str]) -> list[str]:
    """.txt files as given; everything else through the chat data rules (files, folders, prefixes)."""
    files = []
    for item in inputs:
        files += [item] if item.endswith(".txt") else chat_data.expand_inputs([item])
    return files


def _txt_records(url: str):
    with open_url(url) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield "file", BadRecord(f"not UTF-8: byte {e.start}")
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"line {n}", line.strip()


def read_prompts(inputs: list[str]) -> PromptRead:
    """Every usable prompt of the files, plus skipped records; an error when none is usable."""
    out = PromptRead()
    files = prompt_files(inputs)
    for url in files:
        records = _txt_records(url) if url.endswith(".txt") else chat_data._records(url)
        for where, record in records:
            try:
                if isinstance(record, BadRecord):
                    raise record
                out.prompts.append(Prompt(to_prompt(record), url, where))
            except BadRecord as e:
                out.skipped.append(Skip(url, where, str(e)))
    if not out.prompts:
        first = "; ".join(str(s) for s in out.skipped[:3]) or "the files are empty"
        raise ForjaInputError(f"no usable prompts in {', '.join(files)}: {first}. Fix: {PROMPT_FIX}")
    return out


# ---- candidate answers ---------------------------------------------------------------------------------


def policy_source(model: Manifest) -> tuple[Manifest, str | None]:
    """(the stage whose export is the base, the adapter folder URL or None) of a model stage: a stage that
    trained an adapter (sft, dpo) is its base's export plus that adapter; any other its own export."""
    if model.files_under("adapter"):
        for name, ref in model.inputs.items():
            if name == "tokenizer":
                continue
            base = read_manifest(Storage(ref.url.rsplit("/", 2)[0]), ref.stage, ref.key)
            if base is not None and base.files_under("export"):
                return base, f"{model.url}/adapter"
    return model, None


def two_answers(draws: list[list[str]]) -> list[list[str]]:
    """Per prompt, its first two different non-empty answers among the draws (fewer if there are none)."""
    out = []
    for answers in draws:
        distinct = list(dict.fromkeys(a for a in answers if a.strip()))
        out.append(distinct[:2])
    return out


def sample_pairs(policy, template, prompts: list[Prompt], cfg: FeedbackConfig) -> list[list[str]]:
    """Up to `cfg.tries` sampled answers per prompt, drawn until two differ; returns the two (or fewer)."""
    from models.chat import generate_replies

    draws: list[list[str]] = [[] for _ in prompts]
    for attempt in range(cfg.tries):
        todo = [i for i, answers in enumerate(two_answers(draws)) if len(answers) < 2]
        if not todo:
            break
        replies = generate_replies(
            policy,
            template,
            [prompts[i].messages for i in todo],
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            seed=cfg.seed + attempt,
        )
        for i, reply in zip(todo, replies, strict=True):
            draws[i].append(reply)
    return two_answers(draws)


SAMPLING = ("temperature", "top_k", "top_p", "max_new_tokens", "tries", "seed")


def candidates(
    storage: Storage, cfg: FeedbackConfig, model: Manifest, prompts: list[str] | None = None
) -> Manifest:
    """Two different answers per prompt from `model`'s policy (stage `candidates`, cached like any stage:
    the same model, prompts and sampling settings sample nothing)."""
    import sys

    files = prompt_files(list(prompts or cfg.prompts))
    base, adapter = policy_source(model)
    adapter = cfg.adapter or adapter  # an adapter of the user's replaces the stage's own
    tokenizer = tokenizer_of(model)
    keyed = {
        **cfg.model_dump(mode="json", include=set(SAMPLING)),
        "prompts": data_digests(files),
        "adapter": data_digests(folder_files(cfg.adapter, "feedback.adapter", "a peft adapter folder"))
        if cfg.adapter
        else adapter,
    }

    def build(out: StageDir) -> dict:
        import torch

        from models.chat import ChatTemplate
        from models.policy import load_policy

        read = read_prompts(files)
        cache = cache_root()
        base_dir = local_copy(storage_of(base), base.stage, base.key, cache, "export")
        adapter_dir = None
        if cfg.adapter:
            adapter_dir = local_folder(cfg.adapter, cache)
        elif adapter:
            adapter_dir = local_copy(storage_of(model), model.stage, model.key, cache, "adapter")
        template = ChatTemplate.from_file(
            local_copy(storage_of(tokenizer), tokenizer.stage, tokenizer.key, cache, "hf")
        )
        policy = load_policy(base_dir, adapter_dir).eval()
        if torch.cuda.is_available():
            policy = policy.to("cuda")
        answers = sample_pairs(policy, template, read.prompts, cfg)
        rows, skipped = [], [asdict(s) for s in read.skipped]
        for prompt, pair in zip(read.prompts, answers, strict=True):
            if len(pair) < 2:
                reason = f"no two different answers: {cfg.tries} samples gave {len(pair)} distinct non-empty"
                skipped.append(asdict(Skip(prompt.file, prompt.record, reason)))
                continue
            ident = hashlib.sha256(canonical_json([model.key, prompt.messages, pair]).encode()).hexdigest()
            rows.append({"id": ident[:16], "prompt": prompt.messages, "answers": pair})
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        storage.write_bytes_atomic(body.encode("utf-8"), out.stage, out.key, "candidates.jsonl")
        storage.write_json_atomic(skipped, out.stage, out.key, "skipped.json")
        return {
            "candidates": len(rows),
            "prompts": len(read.prompts),
            "skipped": dict(Counter(s["reason"].split(":", 1)[0] for s in skipped)),
            "model": {"stage": model.stage, "key": model.key, "url": model.url},
            "base_export": f"{base.url}/export",
            "adapter": adapter,
        }

    version = code_version(sys.modules[__name__], chat_data, "models.chat", "models.policy", "models.model")
    return run_stage(storage, STAGE, keyed, {"model": model, "tokenizer": tokenizer}, version, build)


def read_candidates(storage: Storage, m: Manifest) -> list[dict]:
    text = storage.read_text(m.stage, m.key, "candidates.jsonl")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- the form ------------------------------------------------------------------------------------------


class PreferenceForm(RunInput):
    """What the annotator fills in; the Prefect UI renders it as a form under the question."""

    choice: Literal["A", "B", "tie"] = Field(description="The better answer: A, B, or tie when neither is.")
    annotator: str = Field(min_length=1, description="Your name (stored with the choice).")
    comment: str = Field("", description="Why (optional).")
    stop: bool = Field(False, description="End the session after this answer.")


def shown_order(candidate: dict, seed: int) -> tuple[str, str]:
    """(A, B): the two answers in an order fixed per candidate but not by how they were sampled, so a
    habit of picking the first answer does not become a preference for the first sample."""
    flip = hashlib.sha256(f"{seed}:{candidate['id']}".encode()).digest()[0] & 1
    a, b = candidate["answers"]
    return (b, a) if flip else (a, b)


def _fenced(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines() or [""])


def question_markdown(candidate: dict, number: int, total: int, seed: int) -> str:
    a, b = shown_order(candidate, seed)
    turns = candidate["prompt"]
    context = ""
    if len(turns) > 1:
        earlier = "\n\n".join(f"**{m['role']}:** {m['content']}" for m in turns[:-1])
        context = f"**Conversation so far**\n\n{earlier}\n\n"
    return (
        f"### Question {number} of {total}\n\n{context}**Prompt**\n\n{_quote(turns[-1]['content'])}\n\n"
        f"**Answer A**\n\n{_fenced(a)}\n\n**Answer B**\n\n{_fenced(b)}\n\n"
        "Which answer is better? Choose **A**, **B** or **tie** (neither: ties are kept but not trained on), "
        "add your name and, if you like, a comment; tick *stop* to end the session after this one.\n"
    )


def question_form(candidate: dict, number: int, total: int, cfg: FeedbackConfig) -> type[PreferenceForm]:
    """The form for one question: its description shows the prompt and both answers."""
    initial = {"annotator": cfg.annotator} if cfg.annotator else {}
    return PreferenceForm.with_initial_data(
        description=question_markdown(candidate, number, total, cfg.seed), **initial
    )


def choice_record(candidate: dict, answer: PreferenceForm, seed: int, lineage: dict) -> dict:
    """The stored form of one choice: a preference pair (chosen, rejected) unless it is a tie."""
    a, b = shown_order(candidate, seed)
    prompt = candidate["prompt"]
    chosen, rejected = {"A": (a, b), "B": (b, a), "tie": (None, None)}[answer.choice]
    return {
        "id": candidate["id"],
        "prompt": prompt[0]["content"] if len(prompt) == 1 else prompt,
        "chosen": chosen,
        "rejected": rejected,
        "choice": answer.choice,
        "answer_a": a,
        "answer_b": b,
        "annotator": answer.annotator.strip(),
        "comment": answer.comment,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        **lineage,
    }


# ---- the collection -------------------------------------------------------------------------------------


class PairLog:
    """`<root>/feedback/<collection>/pairs.jsonl`, appended one batch at a time."""

    def __init__(self, storage: Storage, collection: str):
        self.storage, self.parts = storage, ("feedback", collection)
        self.pending: list[dict] = []
        self.written = 0

    @property
    def url(self) -> str:
        return self.storage.url(*self.parts, PAIRS)

    def records(self) -> list[dict]:
        if not self.storage.exists(*self.parts, PAIRS):
            return []
        text = self.storage.read_text(*self.parts, PAIRS)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def answered(self) -> set[str]:
        return {r.get("id") for r in self.records()}

    def add(self, record: dict, batch_size: int) -> None:
        self.pending.append(record)
        if len(self.pending) >= batch_size:
            self.flush()

    def flush(self) -> None:
        """Append the pending records: read, add, write a whole new file (atomic on disk and object stores),
        all under the collection's lock."""
        if not self.pending:
            return
        with exclusive(self.storage, *self.parts, ".lock"):
            self.storage.fs.invalidate_cache(self.storage.path(*self.parts))
            old = b""
            if self.storage.exists(*self.parts, PAIRS):
                with self.storage.fs.open(self.storage.path(*self.parts, PAIRS), "rb") as f:
                    old = f.read()
            if old and not old.endswith(b"\n"):
                old += b"\n"
            new = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.pending).encode("utf-8")
            self.storage.write_bytes_atomic(old + new, *self.parts, PAIRS)
        self.written += len(self.pending)
        self.pending = []


def pending_questions(candidates_list: list[dict], log: PairLog, cfg: FeedbackConfig) -> list[dict]:
    """The candidates still to ask about, at most `cfg.max_prompts`."""
    done = log.answered() if cfg.skip_answered else set()
    todo = [c for c in candidates_list if c["id"] not in done]
    return todo[: cfg.max_prompts] if cfg.max_prompts else todo
