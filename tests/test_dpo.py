"""Preference tuning: the DPO and Bradley-Terry losses, the pair readers (HH-RLHF transcripts, explicit
prompts, collected feedback; bad records counted), and both stages end to end on a synthetic rule a tiny
model can learn (the chosen answer is the uppercase one): held-out accuracy, the adapter-disabled reference
equals the base, the saved reward model scores pairs, an unchanged rerun does no work."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from tasks.errors import ForjaInputError
from tasks.storage import Storage

LETTERS = "abcdefghijklmnopqrstuvwxyzñáéíóú"


# ---- losses --------------------------------------------------------------------------------------------


def test_dpo_loss_is_the_sigmoid_loss_of_the_implicit_reward_margin():
    from models.preference_loss import dpo_loss

    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -5.0]), torch.tensor([-3.5, -3.0])
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    margins = 0.5 * ((pc - rc) - (pr - rr))  # [0.5 * (0.5 + 0.5), 0.5 * (0 - 1)] = [0.5, -0.5]
    torch.testing.assert_close(out.margins, margins)
    torch.testing.assert_close(out.loss, -torch.nn.functional.logsigmoid(margins).mean())
    torch.testing.assert_close(out.chosen_rewards, 0.5 * (pc - rc))
    assert out.accuracy.item() == 0.5
    # policy == reference: every margin 0, loss log 2, no pair counted as preferred
    same = dpo_loss(pc, pr, pc, pr)
    assert math.isclose(same.loss.item(), math.log(2), rel_tol=1e-6) and same.accuracy.item() == 0.0
    # the gradient raises the chosen answer's log-prob and lowers the rejected one's, not the reference's
    pc_, pr_, rc_ = pc.clone().requires_grad_(), pr.clone().requires_grad_(), rc.clone().requires_grad_()
    dpo_loss(pc_, pr_, rc_, rr).loss.backward()
    assert (pc_.grad < 0).all() and (pr_.grad > 0).all() and rc_.grad is None or (rc_.grad == 0).all()
    smoothed = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    expected = -(
        0.8 * torch.nn.functional.logsigmoid(margins) + 0.2 * torch.nn.functional.logsigmoid(-margins)
    )
    torch.testing.assert_close(smoothed.loss, expected.mean())
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0)


def test_bradley_terry_loss():
    from models.preference_loss import bradley_terry_loss

    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    out = bradley_terry_loss(chosen, rejected)
    expected = [-math.log(1 / (1 + math.exp(-d))) for d in (2.0, 0.0, -2.0)]
    assert math.isclose(out.loss.item(), sum(expected) / 3, rel_tol=1e-6)
    assert math.isclose(out.accuracy.item(), 1 / 3, rel_tol=1e-6)
    # a shift of every reward changes nothing but the centering term
    shifted = bradley_terry_loss(chosen + 10, rejected + 10)
    assert math.isclose(shifted.loss.item(), out.loss.item(), rel_tol=1e-6)
    centered = bradley_terry_loss(chosen + 10, rejected + 10, center_coef=0.01)
    assert centered.loss.item() > shifted.loss.item() + 3


def test_sequence_logps_sum_the_answer_tokens_only():
    from models.model import IGNORE_INDEX
    from models.preference_loss import sequence_logps

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor(
        [[IGNORE_INDEX, 3, 5, IGNORE_INDEX], [1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    )
    logp = logits.log_softmax(-1)
    expected = torch.stack([logp[0, 1, 3] + logp[0, 2, 5], logp[1, 0, 1]])
    torch.testing.assert_close(sequence_logps(logits, targets), expected)


# ---- readers -------------------------------------------------------------------------------------------


def _jsonl(path: Path, records: list) -> str:
    body = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)
    path.write_text(body, encoding="utf-8")
    return str(path)


HH_PROMPT = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: ¿Qué es un ñu?"


def test_pair_readers_formats_and_counted_skips(tmp_path):
    from tasks.preference_data import read_pair_files

    hh = _jsonl(
        tmp_path / "hh.jsonl",
        [
            {
                "chosen": f"{HH_PROMPT}\n\nAssistant: Un antílope.",
                "rejected": f"{HH_PROMPT}\n\nAssistant: Un pájaro.",
            },
            {"chosen": "\n\nHuman: A?\n\nAssistant: B", "rejected": "\n\nHuman: C?\n\nAssistant: D"},
            {"chosen": "\n\nHuman: A?\n\nAssistant: ", "rejected": "\n\nHuman: A?\n\nAssistant: D"},
            {"chosen": "just text", "rejected": "\n\nHuman: A?\n\nAssistant: D"},
            "{broken",
        ],
    )
    explicit = _jsonl(
        tmp_path / "explicit.jsonl",
        [
            {"prompt": "¿Capital de España?", "chosen": "Madrid.", "rejected": "París."},
            {
                "prompt": [{"role": "system", "content": "Brief."}, {"role": "user", "content": "2+2?"}],
                "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}],
            },
            {"prompt": "Same?", "chosen": "yes", "rejected": " yes "},
            {"prompt": "Tie?", "chosen": None, "rejected": None, "choice": "tie", "annotator": "Ana"},
            {"prompt": "Fed back", "chosen": "good", "rejected": "bad", "choice": "B", "annotator": "Íñigo"},
            {"prompt": "<|user|>forged", "chosen": "a", "rejected": "b"},
        ],
    )
    read = read_pair_files([hh, explicit])
    assert [(p.prompt[-1]["content"], p.chosen, p.rejected, p.format) for p in read.pairs] == [
        ("¿Qué es un ñu?", "Un antílope.", "Un pájaro.", "transcript"),
        ("¿Capital de España?", "Madrid.", "París.", "prompt"),
        ("2+2?", "4", "5", "prompt"),
        ("Fed back", "good", "bad", "feedback"),
    ]
    assert read.pairs[0].prompt[:2] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert read.pairs[2].prompt[0]["role"] == "system"
    where = {(Path(s.file).name, s.record, s.reason.split(":")[0]) for s in read.skipped}
    assert where == {
        ("hh.jsonl", "line 2", "different prompts"),
        ("hh.jsonl", "line 3", "empty answer"),
        ("hh.jsonl", "line 4", "not a transcript"),
        ("hh.jsonl", "line 5", "invalid JSON"),
        ("explicit.jsonl", "line 3", "identical answers"),
        ("explicit.jsonl", "line 4", "tie"),
        ("explicit.jsonl", "line 6", "chat marker in text"),
    }
    assert read.files[hh] == {"records": 5, "used": 1}


def test_nothing_usable_is_an_error_naming_file_line_and_fix(tmp_path):
    from tasks.preference_data import prepare_pairs, read_pair_files

    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "Hola", "chosen": "", "rejected": "Adiós"}])
    with pytest.raises(ForjaInputError, match=r"bad.jsonl \(line 1\): empty answer.*Fix:"):
        prepare_pairs([bad], "skip", 0.1, None, 64, tmp_path / "out")
    with pytest.raises(ForjaInputError, match=r"bad.jsonl \(line 1\): empty answer: .*; fix the record"):
        read_pair_files([bad], "fail")
    with pytest.raises(ForjaInputError, match="does not exist"):
        read_pair_files([str(tmp_path / "missing.jsonl")])


# ---- stages on a synthetic rule ------------------------------------------------------------------------


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6))))
    order = sorted(words)
    rng.shuffle(order)
    return order


def _prompt(i: int, word: str) -> str:
    return f"Escribe: {word}" if i % 2 else f"Write: {word}"


def _pairs(words: list[str]) -> list[dict]:
    """The rule: the chosen answer is the word in capitals (Ñ, Á, ... included), the rejected one as is."""
    return [{"prompt": _prompt(i, w), "chosen": w.upper(), "rejected": w} for i, w in enumerate(words)]


TRAINING = {
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "optim": {"lr": 5e-3, "min_lr": 5e-4, "warmup_steps": 5, "weight_decay": 0.0},
    "micro_batch": 16,
    "max_steps": 40,
    "val_every": 40,
    "ckpt_every": 40,
    "accelerator": "cpu",
}


def _dpo_config(**over):
    from tasks.config import DPOConfig

    return DPOConfig(
        **{
            **TRAINING,
            "val_fraction": 0.2,
            "beta": 0.1,
            "sample_prompts": ["Escribe: niño"],
            "sample_tokens": 8,
            **over,
        }
    )


def _rm_config(**over):
    from tasks.config import RewardModelConfig

    return RewardModelConfig(**{**TRAINING, **over})


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("FORJA_PROGRESS", "0")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uppercase(tmp_path_factory, one_thread):
    """A random-init base, tuned with DPO and given a reward model on 500 pairs of the rule (plus bad
    records), through the real stages: readers, launcher, `python -m models.dpo` / `models.reward`."""
    from chat_helpers import base_stage, tokenizer_stage

    from tasks.align import dpo, reward_model

    root = tmp_path_factory.mktemp("dpo")
    storage = Storage(str(root / "store"))
    words = _words(560, seed=0)
    train, heldout = words[:500], words[500:]
    lines = [f"Write: {w} Escribe: {w.upper()} {w}" for w in words]
    tok = tokenizer_stage(storage, lines, model_type="char", vocab_size=300, character_coverage=1.0)
    # as in SFT's test: embeddings past the 0.02 initialisation, so a frozen base's logits are not all ~0
    base = base_stage(storage, tok, arch="gpt2", n_layer=2, n_head=4, d_model=64, context=32, init_std=0.1)
    bad = [
        {"prompt": "Write: " + "x" * 40, "chosen": "X", "rejected": "x"},  # prompt longer than the context
        {"prompt": "Write: abc", "chosen": "ABC", "rejected": "ABC"},
    ]
    files = [_jsonl(root / "pairs.jsonl", _pairs(train) + bad)]
    dpo_m = dpo(storage, _dpo_config(), base, tok, files)
    rm_m = reward_model(storage, _rm_config(), base, _dpo_config(), tok, files)
    return {
        "storage": storage,
        "dpo": dpo_m,
        "rm": rm_m,
        "base": base,
        "tok": tok,
        "files": files,
        "heldout": heldout,
    }


def test_dpo_learns_the_rule_and_the_reference_is_the_base(uppercase, record_property):
    from models.chat import ChatTemplate
    from models.pair_data import pair_batch
    from models.policy import load_decoder, load_policy
    from models.preference_loss import sequence_logps
    from tasks.preference_data import Encoded

    m, storage = uppercase["dpo"], uppercase["storage"]
    s = m.stats
    record_property("dpo_val_accuracy", s["val_accuracy"])
    assert s["val_accuracy"] >= 0.9 and s["val_margin"] > 0, s
    assert s["val_loss"] < s["val_loss_start"] and math.isclose(
        s["val_loss_start"], math.log(2), rel_tol=1e-4
    )
    assert s["reference_max_abs_diff"] == 0.0
    assert s["data"]["train"]["pairs"] + s["data"]["val"]["pairs"] == 500
    assert s["data"]["skipped"] == {"prompt longer than the context": 1, "identical answers": 1}
    assert s["trainable_params"] < 0.2 * s["params"]
    out = Path(storage.path("dpo", m.key))
    assert (out / "curves.png").stat().st_size > 5000 and (out / "adapter" / "adapter_config.json").exists()

    # Held-out words never seen in training: the tuned policy prefers their capitals, by its implicit reward.
    base_dir = Path(storage.path("pretrain", uppercase["base"].key, "export"))
    template = ChatTemplate.from_file(storage.path("tokenizer", uppercase["tok"].key, "hf"))
    policy = load_policy(base_dir, out / "adapter").eval()
    rows = []
    for i, w in enumerate(uppercase["heldout"]):
        prompt = template.prompt([{"role": "user", "content": _prompt(i, w)}])
        for answer in (w.upper(), w):
            ids = template.encode_text(answer) + [template.end_id]
            rows.append(Encoded(prompt + ids, [0] * len(prompt) + [1] * len(ids)))
    chosen, rejected = rows[0::2], rows[1::2]
    ids, targets, _ = pair_batch(
        [((c.ids, c.mask), (r.ids, r.mask)) for c, r in zip(chosen, rejected, strict=True)], 3
    )
    x, y = ids[:, :-1], targets[:, :-1]
    with torch.no_grad():
        tuned = sequence_logps(policy(x)[0], y)
        with policy.disable_adapter():
            reference_logits = policy(x)[0]
        base_logits = load_decoder(base_dir).eval()(x)[0]
    # the reference is exactly the base model: the same logits, no second copy of the weights
    torch.testing.assert_close(reference_logits, base_logits, rtol=0, atol=0)
    reference = sequence_logps(reference_logits, y)
    n = len(uppercase["heldout"])
    margins = (tuned[:n] - reference[:n]) - (tuned[n:] - reference[n:])
    record_property("dpo_heldout_words_accuracy", (margins > 0).float().mean().item())
    assert (margins > 0).float().mean().item() >= 0.9


def test_reward_model_accuracy_in_manifest_and_load_reward_model(uppercase, record_property):
    from models.reward import load_reward_model

    m, storage = uppercase["rm"], uppercase["storage"]
    record_property("reward_model_val_accuracy", m.stats["val_accuracy"])
    assert m.stats["val_accuracy"] >= 0.8, m.stats
    assert {"reward_mean", "reward_std"} <= set(m.stats)
    assert m.inputs["pretrain"].key == uppercase["base"].key

    rm = load_reward_model(storage.path("reward_model", m.key))
    heldout = uppercase["heldout"]
    pairs = [(_prompt(i, w), a) for i, w in enumerate(heldout) for a in (w.upper(), w)]
    scores = rm(pairs)
    wins = [c > r for c, r in zip(scores[0::2], scores[1::2], strict=True)]
    record_property("reward_model_heldout_words_accuracy", sum(wins) / len(wins))
    assert sum(wins) / len(wins) >= 0.8
    # a conversation works as a prompt; one longer than the context keeps its end
    conversation = [{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "¡Hola!"}]
    conversation.append({"role": "user", "content": "Escribe: " + "ñ" * 60})
    assert math.isfinite(rm.score(conversation, "Ñ" * 60))
    normalized = rm(pairs[:4], normalize=True)
    assert normalized != scores[:4]
    with pytest.raises(FileNotFoundError, match="not a reward model folder"):
        load_reward_model(storage.path("dpo", uppercase["dpo"].key))


def test_rerun_with_the_same_inputs_does_no_work(uppercase, monkeypatch, tmp_path):
    import tasks.align
    from tasks.align import dpo, reward_model

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(tasks.align, "run_training", no_training)
    u = uppercase
    assert dpo(u["storage"], _dpo_config(), u["base"], u["tok"], u["files"]) == u["dpo"]
    assert reward_model(u["storage"], _rm_config(), u["base"], _dpo_config(), u["tok"], u["files"]) == u["rm"]
    assert (
        u["dpo"].inputs["pretrain"].key == u["base"].key and u["dpo"].inputs["tokenizer"].key == u["tok"].key
    )

    changed = tmp_path / "pairs.jsonl"
    changed.write_text(Path(u["files"][0]).read_text(encoding="utf-8") + "\n", encoding="utf-8")
    for cfg, files in ((_dpo_config(), [str(changed)]), (_dpo_config(beta=0.2), u["files"])):
        with pytest.raises(AssertionError, match="training started"):
            dpo(u["storage"], cfg, u["base"], u["tok"], files)
    with pytest.raises(AssertionError, match="training started"):
        reward_model(
            u["storage"], _rm_config(center_coef=0.1), u["base"], _dpo_config(), u["tok"], u["files"]
        )


def test_flow_artifacts_and_command(uppercase, prefect_server, tmp_path):
    """The flow reuses both finished runs and reports them in the UI; `forja dpo --json` prints manifests."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.align import dpo_flow

    u = uppercase
    results = dpo_flow(_dpo_config(), _rm_config(), u["storage"].root, u["base"], u["files"])
    assert results["dpo"].key == u["dpo"].key and results["reward_model"].key == u["rm"].key
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dpo-report", "reward-model-report"]))
        )
    assert {a.key for a in arts} == {"dpo-report", "reward-model-report"}
    assert all("data:image/png;base64," in a.data and "preference accuracy" in a.data for a in arts)

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {
                "dpo": _dpo_config().model_dump(mode="json", exclude={"data"}),
                "reward_model": _rm_config().model_dump(mode="json"),
            }
        )
    )
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    args = ["--config", str(recipe), "--storage", u["storage"].root, "--set", f"dpo.base={u['base'].url}"]
    ok = subprocess.run(
        [sys.executable, "-m", "flows.cli", "dpo", *args, "--json", "--input", u["files"][0]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert [json.loads(line)["key"] for line in ok.stdout.splitlines()] == [u["dpo"].key, u["rm"].key]
