"""Human feedback: a real paused flow run, answered through Prefect's API as the UI does, stores preference
pairs with annotator and time; a tie is kept but not trained on; answered questions are not asked again."""

from __future__ import annotations

import contextvars
import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch

from tasks.storage import Storage

PROMPTS = [
    {"prompt": "What is your name?"},
    {"prompt": "¿Qué es un ñu?"},
    {
        "messages": [
            {"role": "user", "content": "Hola"},
            {"role": "assistant", "content": "¡Hola!"},
            {"role": "user", "content": "¿Cómo estás, señor Núñez?"},
        ]
    },
    {"prompt": ""},  # skipped: empty prompt
    {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    },  # no question
]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy_stage(tmp_path_factory, one_thread):
    """A tokenizer, a random base and an 'sft' stage holding a LoRA adapter on it (base export + adapter)."""
    from chat_helpers import base_stage, tokenizer_stage

    from models.lora import LoraSettings, save_adapter
    from models.policy import export_policy, load_policy
    from tasks.manifest import StageDir, run_stage

    root = tmp_path_factory.mktemp("feedback")
    storage = Storage(str(root / "store"))
    lines = ["What is your name? ¿Qué es un ñu? Hola ¡Hola! ¿Cómo estás, señor Núñez? Tell me a joke."] * 20
    tok = tokenizer_stage(storage, lines, model_type="char", vocab_size=300, character_coverage=1.0)
    base = base_stage(storage, tok, arch="llama", n_layer=1, n_head=2, d_model=32, context=96)

    def build(out: StageDir) -> dict:
        torch.manual_seed(1)
        policy = load_policy(storage.path("pretrain", base.key, "export"), lora=LoraSettings(r=4))
        for p in policy.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.05)
        save_adapter(policy, out.path("adapter"))
        export_policy(policy, out.path("export"), storage.path("tokenizer", tok.key, "hf"))
        return {}

    sft = run_stage(storage, "sft", {"test": 1}, {"pretrain": base, "tokenizer": tok}, "test", build)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    more = root / "more.txt"
    more.write_text("Tell me a joke.\n\n¿Por qué el cielo es azul?\n", encoding="utf-8")
    return {"storage": storage, "sft": sft, "base": base, "prompts": [str(prompts), str(more)]}


def _config(**over):
    from tasks.config import FeedbackConfig

    return FeedbackConfig(
        **{"max_new_tokens": 12, "temperature": 1.0, "poll_s": 0.2, "timeout_s": 120, "batch_size": 2, **over}
    )


class Annotator:
    """Answers paused runs through the API, one scripted form at a time, from another thread, as the UI
    does: it reads the form's description, then resumes the run with the form's values."""

    def __init__(self, answers: list[dict]):
        self.answers, self.seen, self.errors = list(answers), [], []
        self.done = threading.Event()
        context = contextvars.copy_context()  # the test server's settings
        self.thread = threading.Thread(target=context.run, args=(self._loop,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(10)

    def _loop(self):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.flow_runs import resume_flow_run
        from prefect.input.actions import read_flow_run_input

        paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["PAUSED"])))
        try:
            with get_client(sync_client=True) as client:
                while self.answers and not self.done.is_set():
                    runs = client.read_flow_runs(flow_run_filter=paused)
                    if not runs:
                        time.sleep(0.1)
                        continue
                    run = runs[0]
                    keyset = run.state.state_details.run_input_keyset
                    description = read_flow_run_input(keyset["description"], flow_run_id=run.id)
                    schema = read_flow_run_input(keyset["schema"], flow_run_id=run.id)
                    self.seen.append({"description": description, "schema": schema, "run": run.id})
                    resume_flow_run(run.id, run_input=self.answers.pop(0))
                    time.sleep(0.3)  # until the run has left its paused state
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)


def test_paused_run_answered_through_the_api_stores_pairs(policy_stage, prefect_server):
    from flows.feedback import feedback_flow
    from tasks.feedback import read_candidates
    from tasks.manifest import read_manifest
    from tasks.preference_data import read_pair_files

    storage, sft = policy_stage["storage"], policy_stage["sft"]
    answers = [
        {"choice": "A", "annotator": "Ana", "comment": "más clara"},
        {"choice": "tie", "annotator": "Ana"},
        {"choice": "B", "annotator": "Íñigo", "comment": "", "stop": True},  # ends the session
        {"choice": "A", "annotator": "Íñigo"},
    ]
    started = datetime.now().astimezone()
    with Annotator(answers[:3]) as annotator:
        summary = feedback_flow(_config(), storage.root, sft, policy_stage["prompts"])
    assert not annotator.errors, annotator.errors
    assert (
        summary["asked"] == 5
        and summary["answered"] == 3
        and summary["choices"] == {"A": 1, "tie": 1, "B": 1}
    )

    cands_manifest = read_manifest(storage, "candidates", summary["candidates"].rsplit("/", 1)[-1])
    assert cands_manifest.stats["candidates"] == 5 and cands_manifest.stats["prompts"] == 5
    assert cands_manifest.stats["adapter"].endswith("/adapter"), "the sft stage's adapter on its base"
    assert cands_manifest.stats["base_export"].startswith(policy_stage["base"].url)
    assert cands_manifest.stats["skipped"] == {"empty prompt": 1, "no question": 1}
    cands = {c["id"]: c for c in read_candidates(storage, cands_manifest)}

    # The form shows the prompt and both answers, and asks for A / B / tie, annotator, comment.
    schema = annotator.seen[0]["schema"]
    assert {"choice", "annotator", "comment", "stop"} <= set(schema["properties"])
    pairs_file = storage.path("feedback", "default", "pairs.jsonl")
    records = [json.loads(x) for x in Path(pairs_file).read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3
    for seen, record in zip(annotator.seen, records, strict=True):
        cand = cands[record["id"]]
        assert cand["prompt"][-1]["content"] in seen["description"]
        assert all(a in seen["description"] for a in cand["answers"])
        assert {record["answer_a"], record["answer_b"]} == set(cand["answers"])
        t = datetime.fromisoformat(record["time"])
        assert (
            t.utcoffset() == timedelta(0)
            and started - timedelta(seconds=5) <= t <= datetime.now().astimezone()
        )
        assert record["model"]["key"] == sft.key and record["candidates"] == cands_manifest.key
    first, tie, third = records
    assert (first["annotator"], first["comment"], first["chosen"]) == ("Ana", "más clara", first["answer_a"])
    assert first["rejected"] == first["answer_b"]
    assert tie["choice"] == "tie" and tie["chosen"] is None and tie["rejected"] is None
    assert (third["annotator"], third["chosen"]) == ("Íñigo", third["answer_b"])

    # The pair reader trains on the two choices and counts the tie as a skip.
    read = read_pair_files([pairs_file])
    assert [(p.chosen, p.format) for p in read.pairs] == [
        (first["chosen"], "feedback"),
        (third["chosen"], "feedback"),
    ]
    assert read.skip_counts() == {"tie": 1}

    # A second session asks only what is left, reusing the sampled answers.
    with Annotator(answers[3:]) as annotator:
        again = feedback_flow(_config(max_prompts=1), storage.root, sft, policy_stage["prompts"])
    assert not annotator.errors, annotator.errors
    assert again["candidates"] == summary["candidates"]
    assert (again["asked"], again["answered"], again["total"], again["pairs"]) == (1, 1, 4, 3)


@pytest.fixture
def s3_root(monkeypatch):
    """A bucket on a real S3-speaking server (moto) on 127.0.0.1."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }.items():
        monkeypatch.setenv(k, v)
    storage = Storage("s3://forja-feedback/root")
    storage.fs.mkdir("forja-feedback")
    yield storage.root
    server.stop()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_pair_log_appends_whole_batches(where, tmp_path, request):
    """Two sessions on one collection: every batch lands, none is half-written or lost (disk and S3)."""
    from tasks.feedback import PairLog

    storage = Storage(str(tmp_path) if where == "local" else request.getfixturevalue("s3_root"))
    logs = [PairLog(storage, "shared") for _ in range(2)]

    def session(log: PairLog, who: str):
        for i in range(6):
            log.add({"id": f"{who}{i}", "prompt": "¿Sí?", "choice": "tie"}, batch_size=3)
        log.flush()

    threads = [threading.Thread(target=session, args=(log, who)) for log, who in zip(logs, "ab", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = sorted(r["id"] for r in logs[0].records())
    assert ids == sorted(f"{w}{i}" for w in "ab" for i in range(6))
    assert logs[0].answered() == set(ids)


def test_prompt_files_bad_input(tmp_path):
    from tasks.errors import ForjaInputError
    from tasks.feedback import read_prompts

    good = tmp_path / "p.txt"
    good.write_text("¿Qué tal?\n\n", encoding="utf-8")
    read = read_prompts([str(good)])
    assert [p.text for p in read.prompts] == ["¿Qué tal?"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "   "}\n{"text": "x"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ForjaInputError, match=r"bad.jsonl \(line 1\): empty prompt.*Fix:"):
        read_prompts([str(bad)])


def test_command_needs_a_server_people_can_answer_in(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "feedback", "--storage", str(tmp_path / "store")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "PREFECT_API_URL" in bad.stderr and "prefect server start" in bad.stderr
