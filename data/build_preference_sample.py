"""Regenerate the bundled preference pairs in data/preference/ from Anthropic's HH-RLHF test splits.

    python data/build_preference_sample.py [--shared ../shared/data]

Writes `hh-rlhf-helpful.jsonl` and `hh-rlhf-harmless.jsonl`: seeded random subsets of short pairs (most
fit the tiny recipe's 128-token context), each line copied unchanged from the source, plus a few longer
multi-turn ones. The MIT licence is copied to `data/preference/licenses/`. The Spanish pairs
(`forja-es.jsonl`) are written by hand for this project and are not regenerated. Sources: data/NOTICE.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "preference"
SHORT_CHARS = 300  # prompt + longer answer
LONG_CHARS = 700


def _split(transcript: str) -> tuple[str, str]:
    cut = transcript.rfind("\n\nAssistant:")
    return transcript[:cut], transcript[cut + len("\n\nAssistant:") :]


def usable(line: str) -> tuple[int, int] | None:
    """(human turns, characters) of a pair whose transcripts differ only in a non-empty last answer."""
    record = json.loads(line)
    (prompt, chosen), (other, rejected) = _split(record["chosen"]), _split(record["rejected"])
    if prompt != other or not chosen.strip() or not rejected.strip() or chosen.strip() == rejected.strip():
        return None
    return prompt.count("\n\nHuman:"), len(prompt) + max(len(chosen), len(rejected))


def sample(src: Path, n_short: int, n_long: int, seed: int) -> list[str]:
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    short, long = [], []
    for i, line in enumerate(lines):
        shape = usable(line)
        if shape is None:
            continue
        turns, chars = shape
        if turns == 1 and chars <= SHORT_CHARS:
            short.append(i)
        elif turns >= 2 and chars <= LONG_CHARS:
            long.append(i)
    rng = random.Random(seed)
    picked = sorted(rng.sample(short, n_short) + rng.sample(long, n_long))
    return [lines[i] for i in picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", default=str(ROOT.parent / "shared" / "data"), help="folder holding preference/hh-rlhf"
    )
    args = parser.parse_args()
    src = Path(args.shared) / "preference" / "hh-rlhf"
    OUT.mkdir(parents=True, exist_ok=True)
    for name, folder, seed in (("helpful", "helpful-base", 1), ("harmless", "harmless-base", 2)):
        lines = sample(src / folder / "test.jsonl.gz", n_short=120, n_long=10, seed=seed)
        (OUT / f"hh-rlhf-{name}.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        print(f"hh-rlhf-{name}.jsonl: {len(lines)} pairs")
    (OUT / "licenses").mkdir(exist_ok=True)
    shutil.copyfile(src / "LICENSE", OUT / "licenses" / "hh-rlhf-MIT.txt")


if __name__ == "__main__":
    main()
