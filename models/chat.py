"""The chat format every post-training stage shares, built on the tokenizer's role markers.

    <|system|>{system}<|end|><|user|>{question}<|end|><|assistant|>{answer}<|end|><|user|>...

Each message is its role marker, its text and `<|end|>`; nothing else (no newlines, no BOS). Markers are
inserted by id and the texts encoded one by one, which gives the same ids as encoding the whole rendered
string (SentencePiece splits at user-defined symbols before anything else). A generation prompt ends with
`<|assistant|>`; the reply ends at `<|end|>`. The training mask is 1 on the tokens the model must learn to
produce: every assistant text and its closing `<|end|>`, never the `<|assistant|>` marker itself (the
prompt supplies it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROLES = ("system", "user", "assistant")
MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
ALL_MARKERS = (*MARKERS.values(), END)

# The same format for transformers' `tokenizer.apply_chat_template` (written into exported tokenizers).
JINJA_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


def marker_in(text: str) -> str | None:
    """The first chat marker inside a message text, if any: such text would forge a turn."""
    found = [(text.index(m), m) for m in ALL_MARKERS if m in text]
    return min(found)[1] if found else None


@dataclass(frozen=True)
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where the token is part of an assistant answer (its text or closing <|end|>)

    def __len__(self) -> int:
        return len(self.ids)


class ChatTemplate:
    """Render conversations to token ids with a SentencePiece tokenizer that has the chat markers."""

    def __init__(self, sp):
        self.sp = sp
        ids = {}
        for piece in ALL_MARKERS:
            i = sp.piece_to_id(piece)
            if i == sp.unk_id() or sp.id_to_piece(i) != piece:
                raise ValueError(
                    f"the tokenizer has no {piece} piece; train it with tokenizer.special_tokens "
                    f"including {list(ALL_MARKERS)}"
                )
            ids[piece] = i
        self.role_ids = {role: ids[m] for role, m in MARKERS.items()}
        self.end_id = ids[END]
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.end_id

    @classmethod
    def from_file(cls, path: str | Path) -> ChatTemplate:
        """From `tokenizer.model`, or a folder that holds one (a tokenizer stage's `hf/`, an export)."""
        import sentencepiece as spm

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.model"
        return cls(spm.SentencePieceProcessor(model_file=str(path)))

    def encode_text(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def render(self, messages: Sequence[Message]) -> Rendered:
        """Ids and assistant mask of a whole conversation. Raises ValueError on an unknown role or a
        message text that contains a chat marker (readers skip such records before they get here)."""
        ids: list[int] = []
        mask: list[int] = []
        for i, message in enumerate(messages):
            role, text = message["role"], message["content"]
            if role not in MARKERS:
                raise ValueError(f"message {i}: unknown role {role!r}; expected one of {ROLES}")
            if (found := marker_in(text)) is not None:
                raise ValueError(f"message {i}: the text contains the chat marker {found}")
            body = self.encode_text(text) + [self.end_id]
            learn = int(role == "assistant")
            ids += [self.role_ids[role], *body]
            mask += [0] + [learn] * len(body)
        return Rendered(ids, mask)

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        """Ids that ask for the next assistant turn: the conversation so far, then `<|assistant|>`."""
        return self.render(messages).ids + [self.role_ids["assistant"]]

    def text(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The rendered conversation as text (what `JINJA_TEMPLATE` produces)."""
        body = "".join(f"{MARKERS[m['role']]}{m['content']}{END}" for m in messages)
        return body + (MARKERS["assistant"] if add_generation_prompt else "")

    def reply_text(self, ids: Sequence[int]) -> str:
        """Decode generated ids up to (not including) the first `<|end|>`."""
        ids = list(ids)
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        return self.decode(ids)


def decoder_of(model):
    """The Decoder to call: a peft-wrapped model's own (with its adapter live) or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def generate_replies(
    model,
    template: ChatTemplate,
    conversations: Sequence[Sequence[Message]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """The assistant's reply to each conversation (greedy by default), with the KV cache.

    Prompts of the same length go through the model together: no padding, so a batched reply equals the
    reply to the prompt alone. `model` is a Decoder or a peft model around one (under
    `with model.disable_adapter():` that is the base model).
    """
    import torch  # here: readers of chat data use this module without loading torch

    decoder = decoder_of(model)  # Decoder.generate runs without gradients
    device = next(decoder.parameters()).device
    prompts = [template.prompt(c) for c in conversations]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    generator = torch.Generator(device=device).manual_seed(seed)
    replies: list[str] = [""] * len(prompts)
    for length, members in sorted(by_length.items()):
        for start in range(0, len(members), batch_size):
            group = members[start : start + batch_size]
            idx = torch.tensor([prompts[i] for i in group], dtype=torch.long, device=device)
            out = decoder.generate(
                idx,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                eos_id=template.end_id,
                generator=generator,
            )
            for row, i in enumerate(group):
                replies[i] = template.reply_text(out[row, length:].tolist())
    return replies
