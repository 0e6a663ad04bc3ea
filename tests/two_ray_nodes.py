"""Two Ray nodes of one CPU each on the loopback address, for tests/test_ray.py (`ray start` refuses
a second node on one machine in Ray's single-machine mode, which keeps every process on 127.0.0.1).

Run as `python -m tests.two_ray_nodes` in a session of its own: prints `address HOST:PORT` once
both nodes are up; on the stdin line `kill-worker` waits until the worker node runs a training
task (a worker process of its raylet titled `ray::_train_task`), ends the node's processes (by
their ids, not gracefully) and prints `killed`; at end of input shuts the cluster down. The test
ends the session by its id afterwards.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench.ray_backend import LOOPBACK, SINGLE_MACHINE

BUSY_TIMEOUT = 300  # seconds to wait for the worker node to run a training task
TASK_TITLE = b"ray::_train_task"


def runs_a_training_task(raylet: int) -> bool:
    """Whether a child of the `raylet` process is executing a training task (Ray titles a worker
    process by the task it runs)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            title = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
        if parent == raylet and title.startswith(TASK_TITLE):
            return True
    return False


def main() -> None:
    os.environ[SINGLE_MACHINE] = "0"
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": LOOPBACK}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    worker = cluster.add_node(**node)
    (raylet,) = worker.all_processes["raylet"]
    print(f"address {cluster.address}", flush=True)
    for line in sys.stdin:
        if line.strip() == "kill-worker":
            deadline = time.monotonic() + BUSY_TIMEOUT
            while not runs_a_training_task(raylet.process.pid):
                if time.monotonic() > deadline:
                    sys.exit("the worker node ran no training task")
                time.sleep(0.1)
            cluster.remove_node(worker, allow_graceful=False)
            print("killed", flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    main()
