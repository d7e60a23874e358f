"""Entry point of every pod of a GPU pool job (infra/k8s/gpu-pool.json): `python -m tasks.node CMD...`.

Node 0 (NODE_RANK=0, or no rank at all) runs CMD: the Prefect worker's flow-run command, so the flow and
its training launch happen there. Nodes 1..N-1 run no flow: they wait for the training specs the flow
writes under the run's shared cache folder (`$FORJA_CACHE/<stage>/<key>/spec.json`, a volume every pod
mounts) and start the same training command with their own NODE_RANK; Lightning's environment variables
(MASTER_ADDR, MASTER_PORT, NODE_RANK) join them to node 0. A spec for fewer nodes than this rank (e.g. a
single-node fine-tune) is skipped. A node leaves when the flow run is over.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("forja.node")
DEFAULT_ENTRY = "models.train"


def pending_specs(cache: Path, rank: int, done: set[Path]) -> list[Path]:
    """Specs in the cache that this node should join, oldest first."""
    found = []
    for path in sorted(cache.glob("*/*/spec.json"), key=lambda p: p.stat().st_mtime):
        if path in done:
            continue
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written: next poll
        if int(spec.get("num_nodes", 1)) > rank:
            found.append(path)
        else:
            done.add(path)
    return found


def join_command(spec_path: Path) -> list[str]:
    entry = json.loads(spec_path.read_text()).get("entry", DEFAULT_ENTRY)
    return [sys.executable, "-m", entry, str(spec_path)]


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
        for spec in pending_specs(cache, rank, done):
            log.info("node %d joins %s", rank, spec)
            code = subprocess.call(join_command(spec), cwd=Path(__file__).resolve().parents[1])
            done.add(spec)
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
