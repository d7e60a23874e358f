"""Shared fixtures: an isolated Prefect home, Prefect's test server, and the sample corpus built once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
TRUTH = json.loads((REPO / "data" / "sample-truth.json").read_text())
BAD = REPO / "tests" / "fixtures" / "bad"


def pytest_configure(config):
    # Before anything imports prefect: a private home per test session, no telemetry noise.
    home = Path(config.rootpath) / ".pytest_cache" / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)  # Prefect does not create missing parents
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # as the forja command does: tests run several training processes at once on few cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def corpus_cfg():
    from tasks.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [f"corpus.collect.inputs=[{SAMPLE}]"]).corpus


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory, prefect_server, corpus_cfg):
    """The corpus flow run once on the bundled sample: (storage, corpus manifest)."""
    from flows.corpus import corpus_flow
    from tasks.storage import Storage

    root = tmp_path_factory.mktemp("store")
    manifest = corpus_flow(corpus_cfg, str(root))
    return Storage(str(root)), manifest


def stage_records(storage, stage: str, sub: str = "shards") -> dict[str, dict]:
    """id -> record of every shard under `<stage>/<the only key>/<sub>`."""
    from tasks.corpus.shards import iter_records

    keys = storage.fs.ls(storage.path(stage), detail=False)
    assert len(keys) == 1, f"expected one {stage} run, found {keys}"
    key = keys[0].rsplit("/", 1)[-1]
    return {r["id"]: r for r in iter_records(storage.datafolder(stage, key, sub))}
