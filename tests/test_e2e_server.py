"""End to end as a team runs Forja: a real `prefect server start`, the work pools and `prefect deploy --all`
from deployments/prefect.yaml, a process worker, and a run triggered through the API with parameters
other than the deployment's defaults (what the UI's "run with parameters" form sends)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, first: int = signal.SIGTERM, then: int = signal.SIGINT) -> None:
    """SIGTERM, then SIGINT (a worker waits for its runs on the first), then kill."""
    for sig in (first, then):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on a free port of 127.0.0.1, with its own home: (api url, environment)."""
    tmp = tmp_path_factory.mktemp("e2e")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "FORJA_HOME": str(REPO),
        "FORJA_STORAGE": str(tmp / "default-store"),
    }
    (tmp / "prefect-home").mkdir()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    # no UI and no background services (scheduler...): the API is all this test needs
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--no-ui", "--no-services"], env=env, stdout=log, stderr=log
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    else:
        pytest.fail("the Prefect server did not answer within 90 s")
    yield api, env, tmp
    _stop(proc, signal.SIGINT, signal.SIGTERM)
    log.close()


@contextlib.contextmanager
def _client(api: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def test_deploy_then_run_with_parameters_through_a_worker(server):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, env, tmp = server
    gpu_template = json.loads((REPO / "infra" / "k8s" / "gpu-pool.json").read_text())
    with _client(api) as client:
        client.create_work_pool(WorkPoolCreate(name="forja-local", type="process"))
        client.create_work_pool(
            WorkPoolCreate(name="forja-gpu", type="kubernetes", base_job_template=gpu_template)
        )

    deployed = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    with _client(api) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        expected = {"pipeline", "corpus", "corpus-refresh-nightly", "tokenizer", "pretrain", "sft", "dpo"}
        expected |= {"rl"}
        assert expected <= set(deployments)
        assert deployments["corpus"].parameters == {"storage": env["FORJA_STORAGE"]}
        pretrain = deployments["pretrain"]
        assert pretrain.work_pool_name == "forja-gpu"
        assert pretrain.job_variables["gpu_count"] == pretrain.parameters["config"]["pretrain"]["devices"]
        assert pretrain.job_variables["node_count"] == pretrain.parameters["config"]["pretrain"]["num_nodes"]
        # typed parameters: the UI draws a form for the recipe's sections
        schema = deployments["pipeline"].parameter_openapi_schema
        assert {"ForjaConfig", "CorpusConfig", "PretrainConfig"} <= set(schema["definitions"])
        pool = client.read_work_pool("forja-gpu")
        limits = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        assert limits["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"

    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    worker_log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "forja-local", "--type", "process"],
        cwd=tmp,
        env=worker_env,
        stdout=worker_log,
        stderr=worker_log,
    )
    store = tmp / "run-store"
    params = {  # not the deployment's defaults: another storage root, input, dedup settings and parallelism
        "storage": str(store),
        "config": {
            "collect": {"inputs": ["data/sample/wiki"]},
            "clean": {"c4_min_sentences": 3},
            "dedup": {"num_buckets": 14, "hashes_per_bucket": 8},
            "tasks": 1,
            "workers": 1,
        },
    }
    try:
        with temporary_settings({PREFECT_API_URL: api}):
            run = run_deployment("corpus/corpus", parameters=params, timeout=240, poll_interval=1)
    finally:
        _stop(worker)  # before the server
        worker_log.close()
    assert run.state.is_completed(), (tmp / "worker.log").read_text()[-4000:]

    from tasks.manifest import Manifest

    (stats,) = store.glob("stats/*/manifest.json")
    corpus = Manifest.model_validate_json(stats.read_text())
    (deduped,) = store.glob("dedup/*/manifest.json")
    dedup = Manifest.model_validate_json(deduped.read_text())
    assert dedup.config["dedup"]["num_buckets"] == 14 and dedup.config["dedup"]["hashes_per_bucket"] == 8
    assert corpus.stats["documents"] > 0 and set(corpus.stats["languages"]) == {"en", "es"}
    assert not (tmp / "default-store").exists(), "the run used the storage root it was given"

    with _client(api) as client:
        assert client.read_flow_run(run.id).parameters["config"]["dedup"]["num_buckets"] == 14
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    by_key = {a.key: a for a in arts}
    assert {"corpus-report", "corpus-funnel", "corpus-clean-filters"} <= set(by_key)
    assert f"**{corpus.stats['documents']:,} documents**" in by_key["corpus-report"].data
