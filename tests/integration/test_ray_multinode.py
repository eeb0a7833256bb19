"""The gateway on a Ray cluster of two nodes, and the loss of one under load.

A head and a worker node, each its own ``ray start`` on this machine (separate raylets, one CPU
each), joined by ``mlgate serve --address`` in Ray Serve direct ingress with two replicas, one
per node (``max_replicas_per_node: 1``): what the Helm chart runs, one replica per worker pod, each
answering on its own pod's port. On one machine the two replicas cannot both listen on the same
port: Ray's direct ingress gives the second one the next port, and the test's client balances over
both as a Kubernetes Service does over the pods (tests/integration/balanced_load.py).

Then the worker node is killed under load (SIGKILL of its raylet, agents and the replica's worker
process), a new worker node joins (as KubeRay replaces a lost pod), and Ray Serve puts the lost
replica there. Run with ``-s`` to see the figures (loadtests/RESULTS.md keeps them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from examples.fraud.train import FEATURE_NAMES
from serving.launcher import DEFAULT_CONFIG, GATEWAY, ray_environment, read_config
from serving.settings import Settings
from tests.integration import balanced_load
from tests.integration.conftest import apply_examples, gateway_env
from tests.integration.ray_cluster import RayCluster

pytestmark = pytest.mark.integration

MODEL = "fraud-detector"
PREDICT = f"/v1/models/{MODEL}/predict"
REPLICAS = 2
CONCURRENCY = 32


@pytest.fixture(scope="module")
def stack(tmp_path_factory, settings, champion, redis_server, train_table):
    """A two-node cluster with the gateway deployed on it through `mlgate serve --address`."""
    import ray

    state = tmp_path_factory.mktemp("multinode-state")
    prefix = "mlgrn"
    apply_examples(Settings(state_dir=settings.state_dir, mlflow_tracking_uri=None,
                            redis={"url": redis_server.url, "prefix": prefix}))
    env = gateway_env(state, redis_server.url, MLGATE_REDIS__PREFIX=prefix,
                      MLFLOW_TRACKING_URI=settings.tracking_uri, MLGATE_HTTP__DRAIN_S="2")
    port = int(env["MLGATE_HTTP__PORT"])
    gateway_settings = Settings(state_dir=state, http={"ingress": "direct", "port": port, "drain_s": 2})
    # what `mlgate serve --address` says the cluster's nodes must run with
    cluster = RayCluster(ray_environment(gateway_settings))
    gateway = None
    try:
        cluster.start_node()
        cluster.start_node()
        config = read_config(DEFAULT_CONFIG)
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] == GATEWAY:
                deployment["max_replicas_per_node"] = 1
        config_file = state / "serve.yaml"
        config_file.write_text(yaml.safe_dump(config))
        log = open(state / "gateway.log", "wb")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--ingress", "direct", "--replicas", str(REPLICAS),
             "--address", cluster.address, "--config", str(config_file)],
            env={**os.environ, **env, **cluster.client_env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with pytest.MonkeyPatch.context() as patch:  # this process joins as a driver too
            for name, value in cluster.client_env.items():
                patch.setenv(name, value)
            ray.init(address=cluster.address, namespace="mlgate-tests", log_to_driver=False,
                     logging_level="WARNING")
        try:
            wait_for(lambda: len(replica_nodes()) == REPLICAS and len(endpoints()) == REPLICAS
                     and all(ready(p) for p in endpoints()), 240,
                     lambda: (state / "gateway.log").read_text()[-4000:])
        except TimeoutError as exc:
            pytest.fail(str(exc))
        rows = train_table.head(60)[FEATURE_NAMES].to_dict("records")
        bodies = [{"instances": rows[i:i + 1 + i % 3]} for i in range(0, 60, 3)]
        yield {"cluster": cluster, "bodies": bodies, "state": state}
    finally:
        if gateway is not None:
            stop(gateway)
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_for(check, timeout_s: float, why=lambda: "") -> float:
    """Poll ``check`` until true; returns the time.monotonic() it first held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.25)
    raise TimeoutError(f"not within {timeout_s:.0f}s\n{why()}")


def alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def replica_nodes() -> list[str]:
    """The nodes of the Gateway replicas that Ray Serve counts as running."""
    import ray
    from ray import serve
    from ray._private import state  # the actor table without a dashboard

    app = serve.status().applications.get("mlgate")
    gateway = app.deployments.get(GATEWAY) if app is not None else None
    if gateway is None or gateway.replica_states.get("RUNNING", 0) != REPLICAS:
        return []
    ray.nodes()  # state's GCS connection is set up by the first public call
    return [a["Address"]["NodeID"] for a in state.actors(actor_state_name="ALIVE").values()
            if a["ActorClassName"].endswith(f":{GATEWAY}")]


def endpoints() -> list[int]:
    """The HTTP ports of the Gateway's running replicas, from Ray Serve's own list for load
    balancers (its controller's target groups). On one machine the second node's replica takes
    the next free port above ``http.port``, and a replacement may take yet another one."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    groups = ray.get(controller.get_target_groups.remote("mlgate"))
    return sorted(t.port for g in groups if str(g.protocol).upper().endswith("HTTP") for t in g.targets)


def describe(stack) -> str:
    """What Ray Serve and the nodes say, for a failure message."""
    from ray import serve

    app = serve.status().applications.get("mlgate")
    return (f"alive nodes {sorted(alive_nodes())}, replicas on {replica_nodes()}, "
            f"endpoints {endpoints()}, ready {[p for p in endpoints() if ready(p)]}\n{app}\n"
            f"{(stack['state'] / 'gateway.log').read_text()[-3000:]}")


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def predictions(port: int, body: dict) -> list:
    response = httpx.post(f"http://127.0.0.1:{port}{PREDICT}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_two_nodes_run_one_replica_each_and_both_answer_alike(stack):
    nodes = replica_nodes()
    assert len(set(nodes)) == REPLICAS and set(nodes) == alive_nodes()
    first, second = endpoints()
    for body in stack["bodies"][:5]:
        assert predictions(first, body) == predictions(second, body)


def test_a_lost_worker_node_costs_a_bounded_window_and_its_replica_returns_on_a_new_node(stack):
    cluster, bodies = stack["cluster"], stack["bodies"]
    before_ports = endpoints()
    expected = [predictions(before_ports[0], body) for body in bodies]
    before = alive_nodes()
    marks: dict[str, float] = {}

    async def scenario() -> list[balanced_load.Outcome]:
        stop = asyncio.Event()
        load = asyncio.create_task(balanced_load.run(balanced_load.Balancer(endpoints), PREDICT, bodies,
                                                     CONCURRENCY, stop))
        await asyncio.sleep(3)
        marks["kill"] = time.monotonic()
        await asyncio.to_thread(cluster.nodes[1].kill)
        marks["killed"] = time.monotonic()
        await asyncio.to_thread(cluster.start_node)  # as KubeRay replaces a lost pod
        marks["joined"] = time.monotonic()

        def restored() -> bool:
            nodes = set(replica_nodes())
            if "dead" not in marks and len(alive_nodes() & before) < len(before):
                marks["dead"] = time.monotonic()
            ports = endpoints()
            return (len(nodes) == REPLICAS and not nodes <= before and len(ports) == REPLICAS
                    and all(ready(p) for p in ports))

        marks["restored"] = await asyncio.to_thread(wait_for, restored, 180, lambda: describe(stack))
        await asyncio.sleep(3)
        stop.set()
        return await load

    outcomes = asyncio.run(scenario())
    kill, restored = marks["kill"], marks["restored"]
    failed = [o for o in outcomes if o.status != 200]
    wrong = [o for o in outcomes if o.status == 200 and o.predictions != expected[o.body]]
    figures = {
        "requests": len(outcomes), "failed": len(failed), "wrong": len(wrong),
        "failed_window_s": [round(t - kill, 2) for t in balanced_load.window(outcomes, lambda o: o.status != 200) or ()],
        "node_dead_after_s": round(marks.get("dead", float("nan")) - kill, 1),
        "new_node_joined_after_s": round(marks["joined"] - kill, 1),
        "full_replicas_after_s": round(restored - kill, 1),
        "p99_ms_before": round(balanced_load.p99_ms(outcomes, 0, kill), 1),
        "p99_ms_during": round(balanced_load.p99_ms(outcomes, kill, restored), 1),
        "p99_ms_after": round(balanced_load.p99_ms(outcomes, restored, float("inf")), 1),
        "statuses": sorted({str(o.status) for o in failed}),
        "ports_before": before_ports, "ports_after": endpoints(),
    }
    print("node loss:", json.dumps(figures))
    assert not wrong, wrong[:3]
    assert all(o.start >= kill for o in failed), "a request failed before the node was lost"
    assert len(failed) <= CONCURRENCY, figures  # those in flight on the lost replica, about
    assert all(o.status == 200 for o in outcomes if o.start > restored), figures
    assert sum(o.status == 200 and kill <= o.start < restored for o in outcomes) > 0, figures
