"""Regenerate the bundled fine-tuning samples in data/sft/ from the source datasets.

    python data/build_sft_sample.py [--shared ../shared/data]

One file per input format the SFT stage reads, English and Spanish:
- chatterbot-es.jsonl, chatterbot-en.jsonl: chat records, OpenAI `messages` style;
- fastchat-identity.json: ShareGPT `conversations` (a JSON list), the assistant renamed to Forja;
- self-instruct.jsonl: instruction records (instruction / input / output).
Fixed seeds and sorted inputs: reruns give the same bytes. Sources and licences: data/NOTICE.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "sft"
MAX_CHARS = 500  # short records: most fit the tiny recipe's 128-token context


def _jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def chatterbot(src: Path, lang: str, limit: int, seed: int) -> list[dict]:
    """Each conversation [u, r, u, r, ...] as alternating user/assistant turns (a trailing user line
    dropped). BaseLoader keeps every value a string: plain YAML would read "yes" as a boolean."""
    records = []
    for path in sorted((src / lang).glob("*.yml")):
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        for conv in doc.get("conversations", []):
            lines = [str(x).strip() for x in conv if str(x).strip()]
            lines = lines[: len(lines) // 2 * 2]
            if not lines or sum(map(len, lines)) > MAX_CHARS:
                continue
            roles = ("user", "assistant") * (len(lines) // 2)
            messages = [{"role": r, "content": text} for r, text in zip(roles, lines, strict=True)]
            records.append({"id": f"chatterbot-{lang}-{path.stem}-{len(records)}", "messages": messages})
    random.Random(seed).shuffle(records)
    return sorted(records[:limit], key=lambda r: r["id"])


def forja_persona(text: str) -> str:
    text = text.replace("Large Model Systems Organization (LMSYS)", "the Forja project")
    text = re.sub(r"\bLMSYS\b", "the Forja project", text)
    return re.sub(r"\bVicuna\b", "Forja", text)


def fastchat(src: Path, limit: int, seed: int) -> list[dict]:
    data = json.loads((src / "dummy_conversation.json").read_text(encoding="utf-8"))
    random.Random(seed).shuffle(data)
    out = []
    for rec in sorted(data[:limit], key=lambda r: int(r["id"].rsplit("_", 1)[-1])):
        turns = [{"from": t["from"], "value": forja_persona(t["value"])} for t in rec["conversations"]]
        out.append({"id": rec["id"], "conversations": turns})
    return out


def self_instruct(src: Path, limit: int, seed: int) -> list[dict]:
    records = []
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        for line in (src / name).read_text(encoding="utf-8").splitlines():
            task = json.loads(line)
            first = task["instances"][0]
            rec = {
                "id": task["id"],
                "instruction": task["instruction"].strip(),
                "input": first["input"].strip(),
                "output": first["output"].strip(),
            }
            if rec["output"] and sum(len(rec[k]) for k in ("instruction", "input", "output")) <= MAX_CHARS:
                records.append(rec)
    random.Random(seed).shuffle(records)
    return records[:limit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared/data", help="source datasets")
    src = ap.parse_args().shared / "sft"
    OUT.mkdir(parents=True, exist_ok=True)
    _jsonl(OUT / "chatterbot-es.jsonl", chatterbot(src / "chatterbot-corpus", "spanish", 200, 1))
    _jsonl(OUT / "chatterbot-en.jsonl", chatterbot(src / "chatterbot-corpus", "english", 150, 2))
    identity = fastchat(src / "fastchat-dummy-conversations", 100, 3)
    (OUT / "fastchat-identity.json").write_text(
        json.dumps(identity, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    _jsonl(OUT / "self-instruct.jsonl", self_instruct(src / "self-instruct", 120, 4))
    licences = OUT / "licenses"
    licences.mkdir(exist_ok=True)
    shutil.copyfile(src / "chatterbot-corpus" / "LICENSE.md", licences / "chatterbot-corpus-BSD-3-Clause.md")
    shutil.copyfile(src / "fastchat-dummy-conversations" / "LICENSE", licences / "Apache-2.0.txt")


if __name__ == "__main__":
    main()
