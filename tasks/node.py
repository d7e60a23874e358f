"""Entry point of every pod of a GPU pool job (infra/k8s/gpu-pool.json): `python -m tasks.node CMD...`.

Node 0 (NODE_RANK=0, or no rank at all) runs CMD: the Prefect worker's flow-run command, so the flow and
its training launch happen there. Nodes 1..N-1 run no flow: they wait for the trainings the flow starts
in the run's shared cache folder (a volume every pod mounts): for a multi-node training the launcher
(tasks/launcher.py) writes `$FORJA_CACHE/<stage>/<key>/launch.json` next to its `spec.json`. Each node
starts the same command as node 0 (`launch_command`), and the environment (MASTER_ADDR, MASTER_PORT,
NODE_RANK) joins it to node 0. A node leaves when the flow run is over.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from tasks.launcher import LAUNCH_FILE, launch_command

log = logging.getLogger("forja.node")


def pending(cache: Path, rank: int, done: set[Path]) -> list[Path]:
    """Launch files of trainings in the cache that this node should join, oldest first."""
    found = []
    for path in sorted(cache.glob(f"*/*/{LAUNCH_FILE}"), key=lambda p: p.stat().st_mtime):
        if path in done:
            continue
        try:
            launch = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written: next poll
        if int(launch["num_nodes"]) > rank:
            found.append(path)
        else:
            done.add(path)
    return found


def join_command(launch_path: Path) -> list[str]:
    """Node 0's training command, for this node (its rank comes from NODE_RANK)."""
    launch = json.loads(launch_path.read_text())
    spec = launch_path.with_name("spec.json")
    return launch_command(launch["module"], spec, launch["launcher"], launch["num_nodes"], launch["devices"])


def flow_run_over(flow_run_id: str | None) -> bool:
    if not flow_run_id:
        return False
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and state.is_final()


def follow(cache: Path, rank: int, flow_run_id: str | None, poll_s: float = 5.0) -> int:
    """Join every training the flow run starts, until the flow run is over."""
    done: set[Path] = set()
    while True:
        for launch in pending(cache, rank, done):
            log.info("node %d joins %s", rank, launch.parent)
            code = subprocess.call(join_command(launch), cwd=Path(__file__).resolve().parents[1])
            done.add(launch)
            if code != 0:
                return code
        if flow_run_over(flow_run_id):
            return 0
        time.sleep(poll_s)


def main(argv: list[str]) -> int:
    rank = int(os.environ.get("NODE_RANK") or 0)
    if rank == 0:
        if not argv:
            raise SystemExit("usage: python -m tasks.node COMMAND [ARGS...]")
        os.execvp(argv[0], argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cache = Path(os.environ.get("FORJA_CACHE", Path.home() / ".cache" / "forja"))
    return follow(cache, rank, os.environ.get("PREFECT__FLOW_RUN_ID"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
