"""infra/ without docker or a cluster: files parse, the GPU pool's job template renders what the GPU
deployment asks for, the multi-node job agrees with it, the compose file wires server, database, bucket and
worker together, and every pod's entry point (tasks/node.py) does what the template relies on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from prefect.utilities.schema_tools.validation import validate
from prefect.utilities.templating import apply_values, find_placeholders

INFRA = REPO / "infra"
POOL = json.loads((INFRA / "k8s" / "gpu-pool.json").read_text())


def _deployments() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def _defaults() -> dict:
    return {k: v["default"] for k, v in POOL["variables"]["properties"].items() if "default" in v}


def _pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_gpu_pool_template_renders_the_gpu_deployment():
    variables = POOL["variables"]["properties"]
    used = {p.name for p in find_placeholders(POOL["job_configuration"])}
    assert used <= set(variables), f"placeholders without a variable: {used - set(variables)}"
    assert {"image", "gpu_count", "gpu_type", "node_count"} <= set(variables)

    pretrain = _deployments()["pretrain"]
    assert pretrain["work_pool"]["name"] == "forja-gpu"
    job_vars = pretrain["work_pool"]["job_variables"]
    assert validate(job_vars, POOL["variables"], raise_on_error=True) == []
    assert validate({"gpu_count": "eight"}, POOL["variables"])  # a wrong type is caught

    values = {**_defaults(), **job_vars, "command": "prefect flow-run execute", "name": "run-1"}
    job = apply_values(POOL["job_configuration"], values)["job_manifest"]
    pod = _pod(job)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == job_vars["gpu_count"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == job_vars["gpu_count"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": job_vars["gpu_type"]}
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == job_vars["node_count"]
    assert job["spec"]["completionMode"] == "Indexed" and container["image"] == job_vars["image"]
    assert container["command"] == ["python", "-m", "tasks.node"] and container["args"] == values["command"]
    # the recipe uses the GPUs and nodes the job asks for
    config = pretrain["parameters"]["config"]["pretrain"]
    assert config["devices"] == job_vars["gpu_count"] and config["num_nodes"] == job_vars["node_count"]


def test_multinode_job_and_service_agree_with_the_pool_template():
    (service,) = yaml.safe_load_all((INFRA / "k8s" / "forja-nodes-service.yaml").read_text())
    (job,) = yaml.safe_load_all((INFRA / "k8s" / "pretrain-multinode.yaml").read_text())
    pool_job = POOL["job_configuration"]["job_manifest"]
    for manifest in (job, pool_job):
        pod = _pod(manifest)
        assert pod["subdomain"] == service["metadata"]["name"] == "forja-nodes"
        labels = manifest["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert list(pod["nodeSelector"]) == ["nvidia.com/gpu.product"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["MASTER_ADDR"]["value"] == "$(JOB_NAME)-0.forja-nodes"
        assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert "job-name" in env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert {"/runs", "/dev/shm"} <= mounts
        assert manifest["spec"]["completionMode"] == "Indexed"
    assert _pod(job)["containers"][0]["image"] == POOL["variables"]["properties"]["image"]["default"]
    claim = _pod(job)["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == POOL["variables"]["properties"]["runs_claim"]["default"]
    assert job["spec"]["completions"] == job["spec"]["parallelism"]
    gpus = _pod(job)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert (
        f"--nnodes={job['spec']['completions']} --nproc-per-node={gpus}"
        in _pod(job)["containers"][0]["args"][0]
    )


def test_compose_wires_server_database_bucket_and_worker():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "create-bucket", "prefect-server", "worker"} <= set(services)
    server, worker = services["prefect-server"], services["worker"]
    db = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    pg = services["postgres"]["environment"]
    assert (
        db
        == f"postgresql+asyncpg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"

    env = worker["environment"]
    bucket = env["FORJA_STORAGE"].removeprefix("s3://").split("/")[0]
    assert (
        env["FORJA_STORAGE"].startswith("s3://")
        and f"local/{bucket}" in services["create-bucket"]["command"][0]
    )
    assert (
        env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        and env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    )
    minio = services["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert worker["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    script = worker["command"][0]
    assert "deploy --all --prefect-file deployments/prefect.yaml" in script
    assert "--base-job-template infra/k8s/gpu-pool.json" in script and "--pool forja-local" in script
    build = worker["build"]
    assert (INFRA / build["context"] / build["dockerfile"]).resolve() == (INFRA / "Dockerfile").resolve()


def test_dockerfile_has_cpu_and_gpu_images_from_the_repository():
    text = (INFRA / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M))
    assert stages["python:3.11-slim"] == "base-cpu" and stages["${CUDA_IMAGE}"] == "base-gpu"
    assert stages["base-${VARIANT}"] == "forja"
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+runtime\S*$", text, re.M)
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    for src in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (REPO / path).exists(), path
    assert "FORJA_HOME=/opt/forja" in text and "FORJA_CODE_COMMIT=${GIT_COMMIT}" in text


def test_slurm_script_is_valid_bash():
    script = INFRA / "slurm" / "pretrain.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "#SBATCH --nodes=" in text and "srun" in text and "-m models.train" in text


def test_pod_zero_runs_the_flow_command_and_other_pods_join_training(tmp_path):
    from tasks.node import join_command, pending

    env = {**os.environ, "NODE_RANK": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "tasks.node", sys.executable, "-c", "print('the flow runs here')"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "the flow runs here"

    from tasks.launcher import LAUNCH_FILE

    for stage, nodes, launcher in (("pretrain", 2, "torchrun"), ("sft", 1, "lightning")):
        run = tmp_path / stage / "k"
        run.mkdir(parents=True)
        (run / "spec.json").write_text("{}")
        launch = {"module": f"models.{stage}", "launcher": launcher, "num_nodes": nodes, "devices": 8}
        (run / LAUNCH_FILE).write_text(json.dumps(launch))
    (tmp_path / "shards" / "k").mkdir(parents=True)  # a synced input folder, not a run
    seen: set = set()
    assert pending(tmp_path, 1, seen) == [tmp_path / "pretrain" / "k" / LAUNCH_FILE]
    assert seen == {tmp_path / "sft" / "k" / LAUNCH_FILE}  # one node only: nothing to join
    assert pending(tmp_path, 2, set()) == []
    env = {"NODE_RANK": "1", "MASTER_ADDR": "job-0.forja-nodes", "MASTER_PORT": "29500"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        cmd = join_command(tmp_path / "pretrain" / "k" / LAUNCH_FILE)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nnodes=2"]
    assert "--nproc-per-node=8" in cmd and "--node-rank=1" in cmd and "--master-addr=job-0.forja-nodes" in cmd
    assert cmd[-3:] == ["-m", "models.pretrain", str(tmp_path / "pretrain" / "k" / "spec.json")]
