"""Regenerate the bundled RL prompt samples in data/rl/ from the original datasets.

    python data/build_rl_sample.py [--shared ../shared/data]

Writes
- gsm8k/train-200.jsonl: the first 200 GSM8K training problems, lines unchanged ({question, answer} with the
  worked solution ending in `#### N`): training prompts that never appear in the evaluation (which uses
  test problems);
- mgsm/mgsm_es-10.tsv: the first 10 Spanish MGSM problems (question<TAB>answer), unchanged: the TSV format
  and Spanish numbers. They are GSM8K test problems and part of the MGSM evaluation: do not train on them
  when you report MGSM.
Reruns give the same bytes. data/NOTICE.md lists the sources and licences.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "rl"
GSM8K_TRAIN, MGSM_ES = 200, 10


def first_lines(path: Path, n: int) -> str:
    return "".join(path.read_text("utf-8").splitlines(keepends=True)[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared/data", help="source datasets")
    src = ap.parse_args().shared / "rl"
    for sub in ("gsm8k", "mgsm"):
        (OUT / sub).mkdir(parents=True, exist_ok=True)
    (OUT / "gsm8k/train-200.jsonl").write_text(first_lines(src / "gsm8k/train.jsonl", GSM8K_TRAIN), "utf-8")
    (OUT / "mgsm/mgsm_es-10.tsv").write_text(first_lines(src / "mgsm/mgsm_es.tsv", MGSM_ES), "utf-8")
    for path in sorted(OUT.rglob("*.*")):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
