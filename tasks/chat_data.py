"""Chat data for post-training: read conversation files, check each record, encode with the chat template.

Formats, told apart per record:
- chat, OpenAI style: `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}]}`
  (content may also be a list of `{"type": "text", "text": "..."}` parts);
- chat, ShareGPT style: `{"conversations": [{"from": "human" | "gpt" | "system", "value": "..."}]}`;
- instruction: `{"instruction": "...", "input": "...", "output": "..."}` (input optional; the user turn is
  the instruction, a blank line and the input).
Files are `.jsonl` (one record per line) or `.json` (a list of records, or one record), optionally
gzipped; a folder or prefix means every such file below it.

A bad record never stops the stage: it is skipped and counted with its reason and location (file, line
or record number); only when nothing usable remains is that an error, listing what went wrong and how to
fix it. `on_bad_input="fail"` stops at the first bad record instead.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from tasks.errors import ForjaInputError
from tasks.storage import input_files, storage_options

EXTENSIONS = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FIX = (
    "each record needs a user turn and a non-empty assistant answer: {'messages': [{'role': 'user', "
    "'content': ...}, {'role': 'assistant', 'content': ...}]}, ShareGPT {'conversations': [{'from': "
    "'human', 'value': ...}, {'from': 'gpt', 'value': ...}]} or {'instruction', 'input', 'output'}"
)


@dataclass(frozen=True)
class Skip:
    file: str
    record: str  # "line 12" (JSONL) or "record 3" (a JSON list), 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.file} ({self.record}): {self.reason}"


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    file: str
    record: str
    format: str  # "messages" | "sharegpt" | "instruction"


@dataclass
class ChatRead:
    conversations: list[Conversation] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> {records, used}

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(_reason_kind(s.reason) for s in self.skipped).most_common())

    def report(self, limit: int = 200) -> dict:
        return {"counts": self.skip_counts(), "skipped": [asdict(s) for s in self.skipped[:limit]]}


def _reason_kind(reason: str) -> str:
    """The reason without its record-specific detail, for counting."""
    return reason.split(":", 1)[0]


class BadRecord(ValueError):
    """A record that cannot become a conversation; the message is the reason."""


def expand_inputs(inputs: list[str]) -> list[str]:
    """Chat files behind the inputs (files, folders, prefixes), sorted."""
    return input_files(inputs, EXTENSIONS, "chat data")


def _text(value, what: str) -> str:
    if isinstance(value, list):  # OpenAI content parts
        parts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) != len(value) or not all(isinstance(p, str) for p in parts):
            raise BadRecord(f"unsupported content: {what} has non-text parts")
        return "".join(parts)
    if not isinstance(value, str):
        raise BadRecord(f"bad message: {what} is {type(value).__name__}, not text")
    return value


def _turns(record) -> tuple[str, dict[str, str], list[tuple[object, object]]]:
    """(format, role names, [(role, text)]) of a record, before any checks of the turns."""
    if not isinstance(record, dict):
        raise BadRecord(f"not an object: a JSON {type(record).__name__}")
    for fmt, field_name, role_key, text_key, roles in (
        ("messages", "messages", "role", "content", CHAT_ROLES),
        ("sharegpt", "conversations", "from", "value", SHAREGPT_ROLES),
    ):
        if field_name in record:
            turns = record[field_name]
            if not isinstance(turns, list):
                raise BadRecord(f"bad message: {field_name} is not a list")
            pairs = []
            for i, turn in enumerate(turns):
                if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
                    raise BadRecord(f"bad message: turn {i + 1} needs '{role_key}' and '{text_key}'")
                pairs.append((turn[role_key], turn[text_key]))
            return fmt, roles, pairs
    if "instruction" in record:
        instruction = _text(record["instruction"], "instruction")
        extra = _text(record.get("input") or "", "input")
        pairs = [
            ("user", instruction + (f"\n\n{extra}" if extra.strip() else "")),
            ("assistant", record.get("output", "")),
        ]
        if record.get("system"):
            pairs.insert(0, ("system", record["system"]))
        return "instruction", CHAT_ROLES, pairs
    raise BadRecord("unknown format: no messages, conversations or instruction field")


def to_messages(record) -> tuple[list[dict[str, str]], str]:
    """(messages, format) of one record, or BadRecord with the reason."""
    from models.chat import marker_in

    fmt, roles, pairs = _turns(record)
    messages = []
    for i, (raw_role, raw_text) in enumerate(pairs):
        role = roles.get(str(raw_role).lower())
        if role is None:
            raise BadRecord(f"unknown role: {raw_role!r} in turn {i + 1}")
        content = _text(raw_text, f"turn {i + 1}")
        if (marker := marker_in(content)) is not None:
            raise BadRecord(f"chat marker in text: turn {i + 1} contains {marker}")
        messages.append({"role": role, "content": content})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # nothing to learn after the last answer
    if not messages:
        raise BadRecord("no assistant turn: nothing to learn from this record")
    if not any(m["role"] == "user" for m in messages):
        raise BadRecord("no user turn: an answer needs a question")
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        raise BadRecord("empty answer: an assistant turn has no text")
    return messages, fmt


def _records(url: str) -> Iterator[tuple[str, object]]:
    """(location, parsed record or BadRecord) of every record of a file."""
    import fsspec

    with fsspec.open(url, "rb", compression="infer", **storage_options(url)) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield "file", BadRecord(f"not UTF-8: byte {e.start}")
        return
    name = url.removesuffix(".gz")
    if name.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line {n}", BadRecord(f"invalid JSON: {e.msg} at column {e.colno}")
        return
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        yield f"line {e.lineno}", BadRecord(f"invalid JSON: {e.msg} at column {e.colno}")
        return
    items = parsed if isinstance(parsed, list) else [parsed]
    for n, item in enumerate(items, 1):
        yield f"record {n}", item


def read_chat_files(inputs: list[str], on_bad_input: str = "skip") -> ChatRead:
    """Every usable conversation of the inputs, plus the skipped records with reasons."""
    out = ChatRead()
    for url in expand_inputs(inputs):
        counts = out.files.setdefault(url, {"records": 0, "used": 0})
        for where, record in _records(url):
            counts["records"] += 1
            try:
                if isinstance(record, BadRecord):
                    raise record
                messages, fmt = to_messages(record)
            except BadRecord as e:
                skip = Skip(url, where, str(e))
                if on_bad_input == "fail":
                    raise ForjaInputError(f"{skip}; fix the record or set on_bad_input=skip") from None
                out.skipped.append(skip)
                continue
            out.conversations.append(Conversation(messages, url, where, fmt))
            counts["used"] += 1
    return out


def require_usable(n_usable: int, read: ChatRead, what: str = "examples") -> None:
    """ForjaInputError when nothing is left to train on, naming files, reasons and the fix."""
    if n_usable:
        return
    files = ", ".join(read.files) or "no files"
    counts = ", ".join(f"{k}: {v}" for k, v in read.skip_counts().items()) or "no records"
    first = "; ".join(str(s) for s in read.skipped[:3])
    raise ForjaInputError(
        f"no usable {what} in {files} (skipped {counts}). First problems: {first or 'none'}. Fix: {FIX}"
    )


def encode_conversations(read: ChatRead, template, max_length: int) -> tuple[list[Conversation], list, int]:
    """(conversations, their Rendered ids + masks, how many were cut) of those that fit: one whose first
    answer starts beyond `max_length` tokens is skipped (added to `read.skipped`); a longer one is cut
    at `max_length` tokens."""
    kept, rendered, cut = [], [], 0
    for conv in read.conversations:
        r = template.render(conv.messages)
        first = r.mask.index(1)
        if first >= max_length:
            read.skipped.append(
                Skip(
                    conv.file,
                    conv.record,
                    f"prompt longer than the context: {first} tokens before the first answer, "
                    f"max_length {max_length}",
                )
            )
            read.files[conv.file]["used"] -= 1
            continue
        if len(r) > max_length:
            r = type(r)(r.ids[:max_length], r.mask[:max_length])
            cut += 1
        kept.append(conv)
        rendered.append(r)
    return kept, rendered, cut
