"""A real two-node Ray cluster on this machine: `ray start --head` + a second `ray start --address=…`
with its own custom resources, the demo recipe submitted with `launch/ray_job.sh`, actors checked
to have run on both nodes. The cluster is torn down by the test (only the processes it started).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray._private import services

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_nodes
address = sys.argv[1]
actors = list_actors(address=address, detail=True, limit=1000)
print(json.dumps({"nodes": [n.node_id for n in list_nodes(address=address)],
                  "actors": [[a.class_name, a.node_id] for a in actors]}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    # --block keeps every process of the node under this session, so the teardown kills only ours
    return subprocess.Popen(
        [RAY, "start", "--block", *args], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def two_node_cluster():
    gcs, dash = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="tbray-")
    # Ray's token authentication, as a production cluster runs it: the nodes, `ray status` and the
    # job submission all read the same token from the environment (a fresh one per test)
    env = dict(
        os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)
    )
    env.pop("RAY_ADDRESS", None)
    # Ray's CLI rewrites 127.0.0.1 in an address to the machine's IP, so a node bound to loopback is
    # unreachable by `ray status` / a second node: both nodes use the machine's own IP (asked of the
    # network, not of this session's loopback-only Ray, whose node address is 127.0.0.1)
    ip = services.node_ip_address_from_perspective()
    common = [f"--node-ip-address={ip}", "--num-cpus=3", "--num-gpus=0"]
    # each node's dashboard agent needs its own HTTP port: the default (52365) is taken by any other Ray
    # on this machine (the test session's own), and a node without an agent cannot take a job
    agent = [f"--dashboard-agent-listen-port={_free_port()}" for _ in range(2)]
    head = _start(
        ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
         "--resources={\"node_head\": 1}", agent[0], *common],
        env,
    )  # fmt: skip
    procs = [head]
    try:
        deadline = time.time() + 300  # a loaded node can take minutes to start its dashboard
        while subprocess.run(
            [RAY, "status", f"--address={ip}:{gcs}"], env=env, capture_output=True
        ).returncode:
            assert time.time() < deadline, "head node did not start"
            time.sleep(1)
        procs.append(
            _start([f"--address={ip}:{gcs}", '--resources={"node_worker": 1}', agent[1], *common], env)
        )
        while True:
            out = subprocess.run(
                [RAY, "status", f"--address={ip}:{gcs}"], env=env, capture_output=True, text=True
            )
            if out.stdout.count("node_") >= 2 and "node_worker" in out.stdout:
                break
            assert time.time() < deadline, f"worker node did not join:\n{out.stdout}"
            time.sleep(1)
        yield {"gcs": f"{ip}:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_demo_recipe_runs_as_a_ray_job_across_two_nodes(two_node_cluster, tmp_path):
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's `ray` CLI
    env = dict(two_node_cluster["env"], PATH=path, RAY_ADDRESS=two_node_cluster["dashboard"], TOKENBRIDGE_PYTHON=sys.executable,
               TOKENBRIDGE_REMOTE_PYTHON=sys.executable, WANDB_MODE="offline")  # fmt: skip
    overrides = [
        "trainer.steps=2", "trainer.eval_every=0", "data.num_eval=4", "data.prompts_per_step=2",
        "rollout.samples_per_prompt=2", "logging.progress_bar=false", "logging.wandb_mode=disabled",
        # one CPU per actor, three per node: the four actors cannot fit on one node
        "cluster.cpus_per_actor=1", f"trainer.output_dir={tmp_path}",
    ]  # fmt: skip
    for attempt in range(12):  # the head's job agent may need a while after `ray start` returns
        job = subprocess.run(
            ["bash", str(ROOT / "launch" / "ray_job.sh"), "--submission-id", f"tb-multinode-{attempt}", "--", *overrides],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if "No available agent" not in job.stderr:
            break
        time.sleep(10)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "[tokenbridge] done" in job.stdout + job.stderr
    # the cluster's state, read in a process of its own: Ray takes its auth settings at import time
    state = subprocess.run(
        [sys.executable, "-c", STATE_QUERY, two_node_cluster["gcs"]], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert state.returncode == 0, state.stderr[-3000:]
    found = json.loads(state.stdout.strip().splitlines()[-1])
    nodes = set(found["nodes"])
    assert len(nodes) == 2
    workers = [(cls, node) for cls, node in found["actors"] if cls.endswith("Worker")]
    assert {cls for cls, _ in workers} >= {"RolloutWorker", "TeacherWorker", "MappingWorker", "LearnerWorker"}
    used = {node for _, node in workers}
    assert used == nodes, f"actors ran on {len(used)} of {len(nodes)} nodes"
    assert (tmp_path / "ledger.jsonl").exists() and len(
        (tmp_path / "ledger.jsonl").read_text().splitlines()
    ) == 2
