"""Grade-school math (GSM8K, MGSM in English and Spanish): greedy answers, extracted, matched exactly.

The model continues a prompt (`eval.math_prompt` of the problem's language) greedily until a stop string,
EOS or `eval.max_new_tokens`. The answer is the number after the last `####` (GSM8K's own format), else
inside the last `\\boxed{}`, else after the last "the answer is" / "la respuesta es" / "Answer:" /
"Respuesta:", else the last number of the completion. It is right when it equals the reference as a
number (so `5`, `5.00`, `$5` and `5 dollars` all match 5).

The reading rules live in `models.answers` (the RL verifiers use the same ones). How numbers are read,
in both languages:
- a minus sign (`-` or `−`) counts unless it follows a letter or digit (`10-3` is a subtraction);
- currency signs before and units after a number are ignored;
- groups of three digits after spaces are thousands (`80 000`, as MGSM's Spanish writes them);
- with both `.` and `,`, the last one is the decimal mark (`1,234.5` and `1.234,5` are both 1234.5);
- one kind repeated is a thousands separator (`1,234,567`, `1.234.567`);
- a single `,` is thousands when exactly three digits follow and decimal otherwise: `2,125` is 2125 (MGSM's
  answers, Spanish included, write thousands so), `1,5` and `$1,20` are Spanish decimals;
- a single `.` is decimal, except in Spanish where `.` + exactly three digits is thousands (`1.500` euros)
  unless the integer part is 0 (`0.125`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from models.answers import extract_answer, is_correct, numbers, to_number  # noqa: F401 - this module's API
from tasks.errors import ForjaInputError
from tasks.eval.files import read_text
from tasks.eval.models import LanguageModel, Progress


@dataclass(frozen=True)
class Problem:
    question: str
    target: float


def _target(raw: str, where: str, lang: str) -> float:
    value = extract_answer(raw, lang)
    if value is None:
        raise ForjaInputError(f"{where}: no number in the reference answer {raw[-80:]!r}; fix the record")
    return value


def parse_gsm8k(text: str, source: str) -> list[Problem]:
    """GSM8K JSONL: {"question", "answer"} with the answer ending in `#### N`."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} (line {n})"
        try:
            rec = json.loads(line)
            question, answer = rec["question"], rec["answer"]
        except (ValueError, KeyError, TypeError) as e:
            raise ForjaInputError(
                f"{where}: not a GSM8K record ({type(e).__name__}: {e}); expected JSON with "
                "'question' and 'answer' ending in '#### <number>'"
            ) from None
        problems.append(Problem(question, _target(str(answer), where, "en")))
    return problems


def parse_mgsm(text: str, source: str, lang: str) -> list[Problem]:
    """MGSM TSV: question<TAB>answer, no header."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ForjaInputError(f"{source} (line {n}): no tab; expected question<TAB>answer")
        question, answer = line.rsplit("\t", 1)
        problems.append(Problem(question, _target(answer, f"{source} (line {n})", lang)))
    return problems


def load(path: str, lang: str, limit: int | None = None) -> list[Problem]:
    """The first `limit` problems of a GSM8K `.jsonl` or MGSM `.tsv` file (compressed or not)."""
    name = path.removesuffix(".bz2").removesuffix(".gz").removesuffix(".xz")
    text = read_text(path)
    problems = parse_mgsm(text, path, lang) if name.endswith(".tsv") else parse_gsm8k(text, path)
    if not problems:
        raise ForjaInputError(f"{path}: no problems; point the eval at a non-empty GSM8K/MGSM file")
    return problems[:limit] if limit else problems


def evaluate(
    model: LanguageModel,
    problems: list[Problem],
    lang: str,
    prompt: str,
    max_new_tokens: int,
    stop: Sequence[str],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> tuple[dict, list[dict]]:
    """(metrics, one record per problem: completion, extracted answer, reference, right or not)."""
    prompts = [prompt.replace("{question}", p.question) for p in problems]
    completions = model.greedy(prompts, max_new_tokens, stop, batch_size, progress)
    details, right, answered = [], 0, 0
    for n, (problem, completion) in enumerate(zip(problems, completions, strict=True)):
        got = extract_answer(completion, lang)
        ok = is_correct(got, problem.target)
        right += ok
        answered += got is not None
        details.append(
            {"item": n, "target": problem.target, "answer": got, "correct": ok, "completion": completion}
        )
    total = len(problems)
    return {"exact_match": right / total, "answered": answered / total, "items": total}, details
