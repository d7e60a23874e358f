"""Numbers and final answers in model text, in English and Spanish: pure functions shared by the
evaluation (GSM8K / MGSM exact match) and by the verifiers that reward answers in RL.

The final answer of a text is the number after the last `####` (GSM8K's own format), else inside the last
`\\boxed{}`, else after the last "the answer is" / "la respuesta es" / "Answer:" / "Respuesta:", else the
last number of the text. It is right when it equals the reference as a number (so `5`, `5.00`, `$5` and
`5 dollars` all match 5).

How numbers are read, in both languages:
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

import math
import re

_SPACES = " \u00a0\u2009\u202f"  # space, no-break space, thin space, narrow no-break space
NUMBER = re.compile(
    rf"(?:(?<![\w])(?P<sign>[-−]))?[$€£¥]?\s?"
    rf"(?P<num>\d{{1,3}}(?:[{_SPACES}]\d{{3}})+(?:[.,]\d+)?(?!\d)|\d+(?:[.,]\d+)*)"
)
ANSWER_PHRASE = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*:|la\s+respuesta\s+(?:final\s+)?es|respuesta\s*:)",
    re.IGNORECASE,
)


def to_number(raw: str, lang: str = "en") -> float | None:
    """The value of one number as written (digits and separators only), or None if it is not one."""
    s = re.sub(f"[{_SPACES}]", "", raw)
    dots, commas = s.count("."), s.count(",")
    if dots and commas:
        decimal = "." if s.rfind(".") > s.rfind(",") else ","
        if s.count(decimal) > 1:
            return None
        s = s.replace("," if decimal == "." else ".", "").replace(decimal, ".")
    elif dots or commas:
        sep = "," if commas else "."
        head, *groups = s.split(sep)
        if len(groups) > 1:
            if not all(len(g) == 3 for g in groups):
                return None  # "1.2.3": a version or a date, not a number
            s = head + "".join(groups)
        else:
            thousands = len(groups[0]) == 3 and head.strip("0") != "" and (sep == "," or lang == "es")
            s = head + groups[0] if thousands else f"{head}.{groups[0]}"
    try:
        return float(s)
    except ValueError:
        return None


def numbers(text: str, lang: str = "en") -> list[float]:
    """Every number in text, in order, with its sign."""
    found = []
    for m in NUMBER.finditer(text):
        value = to_number(m["num"], lang)
        if value is not None:
            found.append(-value if m["sign"] else value)
    return found


def extract_answer(text: str, lang: str = "en") -> float | None:
    """The final answer in a text (see the module's docstring for the order of the rules)."""
    if "####" in text:
        after = numbers(text.rsplit("####", 1)[1], lang)
        if after:
            return after[0]
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    if boxed and (inside := numbers(boxed[-1], lang)):
        return inside[0]
    phrases = list(ANSWER_PHRASE.finditer(text))
    if phrases and (after := numbers(text[phrases[-1].end() :], lang)):
        return after[0]
    every = numbers(text, lang)
    return every[-1] if every else None


def is_correct(predicted: float | None, target: float) -> bool:
    return predicted is not None and math.isclose(predicted, target, rel_tol=1e-9, abs_tol=1e-6)
