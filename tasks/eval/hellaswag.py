"""HellaSwag: pick the ending of a short scene that the model finds most likely.

Each of the four endings is scored by its log-likelihood after the context. `acc` takes the highest sum;
`acc_norm`, the headline number, divides each sum by the ending's length in UTF-8 bytes first, so long
endings are not penalised for having more tokens and the choice does not depend on the tokenizer.
Random guessing scores 25 %.

Files: the 6-line text format (`<activity>: <context>`, the gold label 0-3, the four endings; the format
of data/eval/hellaswag and of llama.cpp), plain or `.bz2`, or the original JSONL (`activity_label`,
`ctx`, `endings`, `label`), plain or compressed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from tasks.errors import ForjaInputError
from tasks.eval.files import read_text
from tasks.eval.models import LanguageModel, Progress


@dataclass(frozen=True)
class Item:
    context: str
    endings: tuple[str, ...]
    label: int


def _label(raw: object, where: str) -> int:
    try:
        label = int(str(raw).strip())
    except ValueError:
        label = -1
    if not 0 <= label <= 3:
        raise ForjaInputError(f"{where}: gold label {raw!r} is not 0-3; fix or remove the record")
    return label


def parse_text(text: str, source: str) -> Iterator[Item]:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise ForjaInputError(
            f"{source}: {len(lines)} lines is not a multiple of 6 (context, label, four endings per "
            f"item); the last item (from line {len(lines) - len(lines) % 6 + 1}) is incomplete"
        )
    for i in range(0, len(lines), 6):
        context, label, *endings = lines[i : i + 6]
        yield Item(context, tuple(endings), _label(label, f"{source} (line {i + 2})"))


_MARKERS = re.compile(r"\s*\[(?:header|title|step|substeps)\]\s*")


def _clean(text: str) -> str:
    # The WikiHow items carry section markers; the text format has them removed, and so do we.
    return " ".join(_MARKERS.sub(" ", text).split())


def parse_jsonl(text: str, source: str) -> Iterator[Item]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} (line {n})"
        try:
            rec = json.loads(line)
            ctx = rec["ctx"] if "ctx" in rec else f"{rec['ctx_a']} {rec['ctx_b']}"
            endings = tuple(_clean(e) for e in rec["endings"])
            label = rec["label"]
        except (ValueError, KeyError, TypeError) as e:
            raise ForjaInputError(
                f"{where}: not a HellaSwag record ({type(e).__name__}: {e}); expected JSON with "
                "'ctx', 'endings' (four strings) and 'label'"
            ) from None
        if len(endings) != 4:
            raise ForjaInputError(f"{where}: {len(endings)} endings, expected 4")
        activity = rec.get("activity_label")
        context = _clean(f"{activity}: {ctx}" if activity else ctx)
        yield Item(context, endings, _label(label, where))


def load(path: str, limit: int | None = None) -> list[Item]:
    """The first `limit` items of a HellaSwag file (any supported format)."""
    name = path.removesuffix(".bz2").removesuffix(".gz").removesuffix(".xz")
    parse = parse_jsonl if name.endswith((".jsonl", ".json")) else parse_text
    items = []
    for item in parse(read_text(path), path):
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise ForjaInputError(f"{path}: no HellaSwag items; point eval.hellaswag at a non-empty file")
    return items


def evaluate(
    model: LanguageModel, items: list[Item], batch_size: int = 16, progress: Progress | None = None
) -> tuple[dict, list[dict]]:
    """(metrics, one record per item). `progress` counts scored endings, four per item."""
    pairs = [(item.context, " " + ending) for item in items for ending in item.endings]
    scores = model.loglikelihoods(pairs, batch_size, progress)
    details, right, right_norm = [], 0, 0
    for n, item in enumerate(items):
        mine = scores[4 * n : 4 * n + 4]
        raw = [s.logprob for s in mine]
        norm = [s.logprob / len((" " + e).encode("utf-8")) for s, e in zip(mine, item.endings, strict=True)]
        pred, pred_norm = raw.index(max(raw)), norm.index(max(norm))
        right += pred == item.label
        right_norm += pred_norm == item.label
        details.append({"item": n, "label": item.label, "pred": pred, "pred_norm": pred_norm, "logprob": raw})
    total = len(items)
    return {"acc_norm": right_norm / total, "acc": right / total, "items": total}, details
