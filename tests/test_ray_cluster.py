"""The Ray backend on a simulated cluster (ray.cluster_utils.Cluster: a head and worker nodes, each its
own raylet, on this one machine): runs land on worker nodes that never see the run store, and a node
lost mid-run ends its run as interrupted with its curve and best weights kept, while the next job
trains on a node that is still there. The same contract on one local instance: tests/test_jobs.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from waiting import wait_for  # tests/waiting.py

from mtl_core.config import TrainConfig
from mtl_core.jobs.runner import JobRunner, RunnerSettings

ray = pytest.importorskip("ray")
ROOT = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # The head trains nothing (0 CPUs), like a dashboard host; each worker node has one CPU.
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20, "include_dashboard": False},
    )
    ray.init(address=c.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield c
    ray.shutdown()
    c.shutdown()


def _add_node(cluster):
    node = cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    return node


def test_runs_train_on_worker_nodes_and_a_lost_node_interrupts_only_its_run(cluster, store):
    doomed_node = _add_node(cluster)
    runner = JobRunner(store, settings=RunnerSettings(executor="ray", threads=1))
    try:
        long = runner.submit(TrainConfig.preset("hard", epochs=500, batch_size=8, data="synthetic"), owner="a")
        assert wait_for(lambda: len(store.epochs(long)) >= 2, timeout=90), store.get_run(long)
        behind = runner.submit(TrainConfig.preset("hard", epochs=2, data="synthetic"), owner="b")
        time.sleep(1.0)
        assert store.get_run(behind)["status"] == "queued"  # one CPU in the cluster: it waits in our queue
        survivor = _add_node(cluster)
        cluster.remove_node(doomed_node)  # the node and its worker processes are killed
        assert wait_for(lambda: store.get_run(long)["status"] == "interrupted", timeout=60), store.get_run(long)
        run = store.get_run(long)
        assert "Ray worker or node was lost" in run["reason"], run["reason"]
        assert len(store.epochs(long)) >= 2 and run["best_epoch"] >= 1 and os.path.exists(run["weights_path"])
        # The weights came back as bytes and were written here, on the store's host.
        assert Path(run["weights_path"]).parent == store.models_dir
        assert wait_for(lambda: store.get_run(behind)["status"] == "finished", timeout=90), store.get_run(behind)
        assert [e["epoch"] for e in store.epochs(behind)] == [1, 2]
        cluster.remove_node(survivor)
    finally:
        runner.shutdown()
