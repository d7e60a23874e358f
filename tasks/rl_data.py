"""Prompts with reference answers for RL: read files, generate toy problems, check, encode, split.

Formats, told apart by file name:
- `.jsonl` / `.json` (a list, or one record): `{"prompt" | "question": text, "answer" | "reference": text or
  number, "lang": "en" | "es" (optional)}`; GSM8K's own files (`question`, and `answer` ending in `#### N`)
  read as they are;
- `.tsv`: `question<TAB>answer`, no header (MGSM); the language from the file name (`mgsm_es.tsv`) or the
  text.
Gzipped files too; a folder means every such file below it. The reference is the number the answer stands
for (`models.answers.extract_answer`: `#### N`, `\\boxed{}`, "the answer is", else the last number).

The toy task: additions of two `digits`-digit numbers, "What is 23 + 45?" / "¿Cuánto es 23 + 45?", answer
68, drawn from a seeded generator (the same recipe gives the same problems).

A bad record never stops the stage: it is skipped and counted with its reason and location (no prompt, no
answer, no number in the answer, a chat marker in the text, a prompt that leaves no room for the completion
in the context, invalid JSON); only when nothing usable remains is that an error naming the files, the
reasons and the fix. `on_bad_input="fail"` stops at the first bad record instead.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.answers import extract_answer
from models.chat import marker_in
from models.rewards import language_of
from tasks.chat_data import Skip
from tasks.errors import ForjaInputError
from tasks.storage import input_files, storage_options

EXTENSIONS = (".jsonl", ".json", ".tsv", ".jsonl.gz", ".json.gz", ".tsv.gz")
TOY = "toy:addition"
FIX = (
    "each record needs a prompt and, for the answer reward, a numeric answer: JSONL {'prompt': ..., "
    "'answer': ...} (or GSM8K's {'question', 'answer': '... #### N'}), TSV question<TAB>answer; prompts must "
    "leave rl.max_new_tokens of room in the model's context"
)


@dataclass(frozen=True)
class Problem:
    question: str
    reference: str | None  # the number, as text ("68", "2.5"); None when no reward needs one
    lang: str
    file: str
    record: str


@dataclass
class PromptRead:
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    files: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> {records, used}

    def skip(self, file: str, record: str, reason: str, fail: bool) -> None:
        s = Skip(file, record, reason)
        if fail:
            raise ForjaInputError(f"{s}; fix the record or set rl.on_bad_input=skip")
        self.skipped.append(s)
        if file in self.files:
            self.files[file]["used"] -= 1

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason.split(":", 1)[0] for s in self.skipped).most_common())

    def report(self, limit: int = 200) -> dict:
        return {"counts": self.skip_counts(), "skipped": [asdict(s) for s in self.skipped[:limit]]}


def addition_problems(count: int, seed: int = 0, langs: tuple[str, ...] = ("en", "es"), digits: int = 2):
    """`count` additions of two `digits`-digit numbers, the languages taking turns."""
    rng = random.Random(seed)
    low, high = (10 ** (digits - 1) if digits > 1 else 0), 10**digits - 1
    problems = []
    for i in range(count):
        a, b, lang = rng.randint(low, high), rng.randint(low, high), langs[i % len(langs)]
        question = f"What is {a} + {b}?" if lang == "en" else f"¿Cuánto es {a} + {b}?"
        problems.append(Problem(question, str(a + b), lang, TOY, f"problem {i + 1}"))
    return problems


def prompt_files(inputs: list[str]) -> list[str]:
    """Prompt files behind the inputs (files, folders, prefixes), sorted."""
    return input_files(inputs, EXTENSIONS, "RL prompts")


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _language(name: str, text: str, given: object = None) -> str:
    if given in ("en", "es"):
        return str(given)
    stem = name.rsplit("/", 1)[-1].split(".")[0].lower()
    for lang in ("es", "en"):
        if stem.endswith((f"_{lang}", f"-{lang}")) or stem == lang:
            return lang
    return language_of(text)


def _records(url: str):
    """(location, record dict, or an error message) of every record of a file."""
    import fsspec

    with fsspec.open(url, "rb", compression="infer", **storage_options(url)) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield "file", f"not UTF-8: byte {e.start}"
        return
    name = url.removesuffix(".gz")
    if name.endswith(".tsv"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                yield f"line {n}", "no answer: expected question<TAB>answer"
                continue
            question, answer = line.rsplit("\t", 1)
            yield f"line {n}", {"question": question, "answer": answer}
        return
    if name.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"line {n}", f"invalid JSON: {e.msg} at column {e.colno}"
        return
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        yield f"line {e.lineno}", f"invalid JSON: {e.msg} at column {e.colno}"
        return
    for n, item in enumerate(parsed if isinstance(parsed, list) else [parsed], 1):
        yield f"record {n}", item


def to_problem(record: object, url: str, where: str, needs_answer: bool) -> Problem | str:
    """The problem in one record, or the reason it cannot be one."""
    if not isinstance(record, dict):
        return f"not an object: a JSON {type(record).__name__}"
    question = record.get("prompt", record.get("question"))
    if not isinstance(question, str) or not question.strip():
        return "no prompt: expected a 'prompt' or 'question' text"
    if (marker := marker_in(question)) is not None:
        return f"chat marker in text: the prompt contains {marker}"
    lang = _language(url, question, record.get("lang"))
    answer = record.get("answer", record.get("reference"))
    reference = None
    if answer is not None and str(answer).strip():
        value = extract_answer(str(answer), lang)
        if value is None:
            return f"no number in the answer: {str(answer)[-60:]!r}"
        reference = number_text(value)
    elif needs_answer:
        return "no answer: the answer reward needs a reference answer"
    return Problem(question.strip(), reference, lang, url, where)


def read_prompt_files(files: list[str], on_bad_input: str = "skip", needs_answer: bool = True) -> PromptRead:
    out = PromptRead()
    for url in files:
        counts = out.files.setdefault(url, {"records": 0, "used": 0})
        for where, record in _records(url):
            counts["records"] += 1
            counts["used"] += 1
            found = record if isinstance(record, str) else to_problem(record, url, where, needs_answer)
            if isinstance(found, str):
                out.skip(url, where, found, on_bad_input == "fail")
            else:
                out.problems.append(found)
    return out


def user_message(problem: Problem, templates: dict[str, str]) -> str:
    template = templates.get(problem.lang) or templates.get("en") or "{question}"
    return template.replace("{question}", problem.question)


def is_val(problem: Problem, fraction: float) -> bool:
    """Held out by a hash of the question: stable, and a repeated question lands on the same side."""
    digest = hashlib.sha256(problem.question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def encode(problem: Problem, template, templates: dict[str, str], system: str | None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_message(problem, templates)}
    ]
    return {"prompt": problem.question, "ids": template.prompt(messages), "reference": problem.reference}


def require_usable(n: int, read: PromptRead, sources: list[str]) -> None:
    if n:
        return
    counts = ", ".join(f"{k}: {v}" for k, v in read.skip_counts().items()) or "no records"
    first = "; ".join(str(s) for s in read.skipped[:3]) or "none"
    raise ForjaInputError(
        f"no usable prompts in {', '.join(sources) or 'no files'} (skipped {counts}). "
        f"First problems: {first}. Fix: {FIX}"
    )


def prepare_prompts(files: list[str], cfg, template, context: int, folder: Path) -> dict:
    """Read, generate, check and encode the prompts; write `train.jsonl`, `val.jsonl`, `skipped.json`.

    `cfg` is an RLConfig; a prompt whose ids plus `cfg.max_new_tokens` exceed `context` is skipped."""
    from models.grpo_data import write_prompts

    needs_answer = any(r.name == "answer" for r in cfg.rewards)
    read = read_prompt_files(files, cfg.on_bad_input, needs_answer)
    toy = addition_problems(cfg.toy.count, cfg.toy.seed, tuple(cfg.toy.langs), cfg.toy.digits)
    if toy:
        read.files[TOY] = {"records": len(toy), "used": len(toy)}
    train, val, languages = [], [], Counter()
    for problem in [*read.problems, *toy]:
        record = encode(problem, template, cfg.prompt_template, cfg.system)
        if len(record["ids"]) + cfg.max_new_tokens > context:
            reason = (
                f"prompt longer than the context: {len(record['ids'])} tokens + rl.max_new_tokens "
                f"{cfg.max_new_tokens} > {context}"
            )
            read.skip(problem.file, problem.record, reason, cfg.on_bad_input == "fail")
            continue
        (val if is_val(problem, cfg.val_fraction) else train).append(record)
        languages[problem.lang] += 1
    require_usable(len(train), read, [*files, *([TOY] if toy else [])])
    folder.mkdir(parents=True, exist_ok=True)
    stats = {"train": write_prompts(folder / "train.jsonl", train)}
    held_out = len(val)
    if val:
        stats["val"] = write_prompts(folder / "val.jsonl", val[: cfg.max_val_prompts])
    (folder / "skipped.json").write_text(json.dumps(read.report(), indent=2, ensure_ascii=False))
    return {
        **stats,
        "held_out": held_out,
        "skipped": read.skip_counts(),
        "files": read.files,
        "languages": dict(languages),
        "context": context,
    }
