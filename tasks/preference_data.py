"""Preference pairs for DPO and the reward model: read pair files, check each record, encode, split.

Formats, told apart per record (files as for chat data: `.jsonl` / `.json`, gzipped or not, folders):
- explicit prompt: `{"prompt": ..., "chosen": ..., "rejected": ...}`; the prompt is a user message (text)
  or a conversation (`[{"role", "content"}]`), each answer a text or a conversation whose last turn is the
  assistant's answer. Pairs collected with `forja feedback` are of this kind, with the choice, annotator
  and time; a tie (`"choice": "tie"`) is recorded there but skipped here: it prefers neither answer.
- transcripts (Anthropic HH-RLHF): `{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}`,
  two whole conversations that share every turn but the last answer: the shared turns become the prompt.
  Conversations as message lists work the same way.

A bad record (empty or identical answers, different prompts, a prompt longer than the context, ...) is
skipped and counted with its reason and location; only when nothing usable remains is that an error
naming the files, the reasons and the fix.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.chat_data import CHAT_ROLES, BadRecord, Skip, expand_inputs
from tasks.chat_data import _records as records_of
from tasks.errors import ForjaInputError

FIX = (
    "each record needs a prompt and two different, non-empty answers: {'prompt': ..., 'chosen': ..., "
    "'rejected': ...} or HH-RLHF transcripts {'chosen': '\\n\\nHuman: ...\\n\\nAssistant: ...', "
    "'rejected': ...} that differ only in the last answer"
)
TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class Pair:
    prompt: list[dict[str, str]]  # the conversation before the answers
    chosen: str
    rejected: str
    file: str
    record: str
    format: str  # "prompt" | "transcript" | "feedback"

    def key(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass
class PairRead:
    pairs: list[Pair] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> {records, used}

    def skip(self, pair: Pair, reason: str) -> None:
        self.skipped.append(Skip(pair.file, pair.record, reason))
        self.files[pair.file]["used"] -= 1

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason.split(":", 1)[0] for s in self.skipped).most_common())

    def report(self, limit: int = 200) -> dict:
        return {"counts": self.skip_counts(), "skipped": [asdict(s) for s in self.skipped[:limit]]}


def parse_transcript(text: str, what: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' as messages."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise BadRecord(f"not a transcript: {what} does not start with a Human: or Assistant: turn")
    return [{"role": HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"bad answer: {what} is {type(value).__name__ if value is not None else 'missing'}")
    return value


def _messages(value, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise BadRecord(f"bad message: {what} is {type(value).__name__}, not a list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise BadRecord(f"bad message: {what} turn {i + 1} needs 'role' and text 'content'")
        role = CHAT_ROLES.get(str(m.get("role")).lower())
        if role is None:
            raise BadRecord(f"unknown role: {m.get('role')!r} in {what} turn {i + 1}")
        out.append({"role": role, "content": m["content"]})
    return out


def _conversation(value, what: str) -> list[dict[str, str]]:
    return parse_transcript(value, what) if isinstance(value, str) else _messages(value, what)


def _split_final(conv: list[dict[str, str]], what: str) -> tuple[list[dict[str, str]], str]:
    if not conv or conv[-1]["role"] != "assistant":
        raise BadRecord(f"no final answer: the {what} conversation does not end with an assistant turn")
    return conv[:-1], conv[-1]["content"]


def to_pair(record) -> tuple[list[dict[str, str]], str, str, str]:
    """(prompt messages, chosen, rejected, format) of one record, or BadRecord with the reason."""
    from models.chat import marker_in

    if not isinstance(record, dict):
        raise BadRecord(f"not an object: a JSON {type(record).__name__}")
    if record.get("choice") == "tie":
        raise BadRecord("tie: the annotator preferred neither answer (kept in the feedback file)")
    if "chosen" not in record or "rejected" not in record:
        raise BadRecord("unknown format: no chosen and rejected fields")
    if "prompt" in record:
        fmt = "feedback" if "annotator" in record else "prompt"
        prompt = record["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        else:
            prompt = _messages(prompt, "prompt")
        answers = []
        for side in ("chosen", "rejected"):
            value = record[side]
            if isinstance(value, list):  # a conversation: its last turn is the answer
                before, value = _split_final(_messages(value, side), side)
                prompt = prompt + before if side == "chosen" else prompt
            answers.append(_text(value, side))
        chosen, rejected = answers
    else:
        fmt = "transcript"
        prompt, chosen = _split_final(_conversation(record["chosen"], "chosen"), "chosen")
        rejected_prompt, rejected = _split_final(_conversation(record["rejected"], "rejected"), "rejected")
        if rejected_prompt != prompt:
            raise BadRecord("different prompts: chosen and rejected differ before their last answers")
    if not any(m["role"] == "user" for m in prompt) or not all(m["content"].strip() for m in prompt):
        raise BadRecord("no prompt: the conversation before the answers needs a non-empty user turn")
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise BadRecord(f"empty answer: the {side} answer has no text")
    if chosen.strip() == rejected.strip():
        raise BadRecord("identical answers: chosen and rejected are the same text")
    for text in [m["content"] for m in prompt] + [chosen, rejected]:
        if (marker := marker_in(text)) is not None:
            raise BadRecord(f"chat marker in text: {marker}")
    return prompt, chosen, rejected, fmt


def read_pair_files(inputs: list[str], on_bad_input: str = "skip") -> PairRead:
    """Every usable pair of the inputs, plus the skipped records with reasons."""
    out = PairRead()
    for url in expand_inputs(inputs):
        counts = out.files.setdefault(url, {"records": 0, "used": 0})
        for where, record in records_of(url):
            counts["records"] += 1
            try:
                if isinstance(record, BadRecord):
                    raise record
                prompt, chosen, rejected, fmt = to_pair(record)
            except BadRecord as e:
                skip = Skip(url, where, str(e))
                if on_bad_input == "fail" and not str(e).startswith("tie"):
                    raise ForjaInputError(f"{skip}; fix the record or set on_bad_input=skip") from None
                out.skipped.append(skip)
                continue
            out.pairs.append(Pair(prompt, chosen, rejected, url, where, fmt))
            counts["used"] += 1
    return out


def require_usable(n_usable: int, read: PairRead) -> None:
    """ForjaInputError when no pair is left to train on, naming files, reasons and the fix."""
    if n_usable:
        return
    files = ", ".join(read.files) or "no files"
    counts = ", ".join(f"{k}: {v}" for k, v in read.skip_counts().items()) or "no records"
    first = "; ".join(str(s) for s in read.skipped[:3])
    raise ForjaInputError(
        f"no usable preference pairs in {files} (skipped {counts}). First problems: {first or 'none'}. "
        f"Fix: {FIX}"
    )


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    mask: list[int]  # 1 on the answer's tokens (and its closing <|end|>)


def encode_pairs(
    read: PairRead, template, max_length: int
) -> tuple[list[Pair], list[Encoded], list[Encoded], int]:
    """(pairs, chosen rows, rejected rows, how many were cut) of the pairs that fit `max_length` tokens.

    A prompt that leaves no room for an answer is skipped; longer answers are cut to fit (both to the same
    room), and a pair whose answers are the same once cut is skipped: inside the context it has no
    preference to learn."""
    kept, chosen_rows, rejected_rows, cut = [], [], [], 0
    for pair in read.pairs:
        prompt = template.prompt(pair.prompt)
        room = max_length - len(prompt)
        if room < 2:
            read.skip(
                pair,
                f"prompt longer than the context: {len(prompt)} tokens before the answer, max_length "
                f"{max_length}",
            )
            continue
        answers = [template.encode_text(a) + [template.end_id] for a in (pair.chosen, pair.rejected)]
        if any(len(a) > room for a in answers):
            answers = [a[:room] for a in answers]
            if answers[0] == answers[1]:
                read.skip(pair, f"identical within the context: the answers differ only after {room} tokens")
                continue
            cut += 1
        rows = [Encoded(prompt + a, [0] * len(prompt) + [1] * len(a)) for a in answers]
        kept.append(pair)
        chosen_rows.append(rows[0])
        rejected_rows.append(rows[1])
    return kept, chosen_rows, rejected_rows, cut


def pair_language(pair: Pair) -> str:
    from tasks.corpus.lang import detect_language

    return detect_language(" ".join([*(m["content"] for m in pair.prompt), pair.chosen, pair.rejected]))


def prepare_pairs(
    files: list[str], on_bad_input: str, val_fraction: float, template, max_length: int, folder: Path
) -> dict:
    """Read, check and encode the pairs; write `train/`, `val/` (models.pair_data) and `skipped.json`."""
    from models.pair_data import write_pairs
    from tasks.sft import is_val

    read = read_pair_files(files, on_bad_input)
    kept, chosen, rejected, cut = encode_pairs(read, template, max_length)
    if on_bad_input == "fail" and (bad := [s for s in read.skipped if not s.reason.startswith("tie")]):
        raise ForjaInputError(f"{bad[0]}; shorten it, raise max_length or set on_bad_input=skip")
    require_usable(len(kept), read)
    held = [is_val(p.key(), val_fraction) for p in kept]
    if all(held) or not any(held):
        # too little data for the hash to hold some out (or all): the last of every 1/fraction pairs
        every = max(2, round(1 / val_fraction)) if val_fraction else 0
        held = [bool(every) and i % every == every - 1 for i in range(len(kept))]
    folder.mkdir(parents=True, exist_ok=True)
    split = {}
    for name, flag in (("train", False), ("val", True)):
        idx = [i for i, h in enumerate(held) if h == flag]
        if idx:
            split[name] = write_pairs(folder / name, [chosen[i] for i in idx], [rejected[i] for i in idx])
    (folder / "skipped.json").write_text(json.dumps(read.report(), indent=2, ensure_ascii=False))
    return {
        "train": split["train"],
        "val": split.get("val"),
        "truncated": cut,
        "skipped": read.skip_counts(),
        "formats": dict(Counter(p.format for p in kept)),
        "languages": dict(Counter(pair_language(p) for p in kept).most_common()),
        "files": read.files,
        "max_length": max_length,
    }
