"""A private Redis Cluster of real ``redis-server`` processes on free ports of 127.0.0.1, for the
tests that need one (the sync's, the failover test): primaries, optionally replicas of each,
and a ``cluster-node-timeout`` of the test's choosing (Redis's 15 s by default; a failover test
gives a short one, so that a killed primary's replica takes over within seconds).

Every node's cluster bus listens on its port + 10000, so a node's port is chosen only where both
are free. :meth:`LocalRedisCluster.start` returns once every node sees ``cluster_state:ok``, knows
every other node, and every replica has finished its first sync: a test never starts on a cluster
still settling.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.integration.conftest import _ephemeral_start, _is_free

BUS_OFFSET = 10_000


class ClusterNotReady(RuntimeError):
    """The cluster did not reach the state waited for in time (the message says which)."""


@dataclass
class Node:
    port: int
    proc: subprocess.Popen | None = None

    def client(self, timeout_s: float = 1.0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def free_cluster_ports(count: int) -> list[int]:
    """``count`` ports P, each with P and P + 10000 free, below the ephemeral range (so that no
    other process's bind(0) takes one of them meanwhile)."""
    top = _ephemeral_start() - BUS_OFFSET
    ports: list[int] = []
    for _ in range(2000):
        port = random.randrange(10_000, top)
        if port not in ports and _is_free(port) and _is_free(port + BUS_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free ports for a Redis Cluster")


class LocalRedisCluster:
    def __init__(self, folder: Path, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 15_000) -> None:
        self.folder = folder
        self.primaries, self.replicas = primaries, replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [Node(port) for port in free_cluster_ports(primaries * (1 + replicas))]

    @property
    def url(self) -> str:
        """The URL a client is given: one node's (the client discovers the others)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout_s: float = 60) -> None:
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed (.ci/run installs redis-server with redis-cli)")
        for node in self.nodes:
            node.proc = subprocess.Popen(
                ["redis-server", "--port", str(node.port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{node.port}.conf", "--cluster-node-timeout",
                 str(self.node_timeout_ms), "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            self._wait(lambda n=node: _ping(n), deadline, f"node {node.port} did not start")
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout_s)
        self.wait_healthy(deadline - time.monotonic())

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Until every live node says ``cluster_state:ok`` and knows every node, and every live
        replica is linked to its primary with no sync in progress."""
        deadline = time.monotonic() + timeout_s
        self._wait(self._healthy, deadline, "the cluster did not settle (state, membership or replica sync)")

    def _healthy(self) -> bool:
        for node in self.live():
            info = node.client().cluster("info")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                return False
            replication = node.client().info("replication")
            if replication["role"] == "slave" and (replication.get("master_link_status") != "up"
                                                   or replication.get("master_sync_in_progress")):
                return False
        return True

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    def topology(self) -> dict[int, int | None]:
        """Each live primary's port -> its live replica's port (None if it has none), as a live
        node sees the cluster now."""
        nodes = self.live()[0].client().cluster("nodes")
        by_id = {info["node_id"]: _port(address) for address, info in nodes.items()}
        alive = {n.port for n in self.live()}
        primaries: dict[int, int | None] = {}
        for info in nodes.values():
            port = by_id[info["node_id"]]
            if "master" in info["flags"] and "fail" not in info["flags"] and port in alive:
                primaries.setdefault(port, None)
        for info in nodes.values():
            port = by_id[info["node_id"]]
            if "slave" in info["flags"] and port in alive and by_id.get(info["master_id"]) in primaries:
                primaries[by_id[info["master_id"]]] = port
        return primaries

    def owner(self, key: str | bytes) -> int:
        """The port of the primary serving ``key``'s slot, as a live node sees the cluster now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for address, info in self.live()[0].client().cluster("nodes").items():
            if "master" in info["flags"] and any(int(r[0]) <= slot <= int(r[-1]) for r in info["slots"]):
                return _port(address)
        raise ClusterNotReady(f"slot {slot} is served by no node")

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: no goodbye to its clients or to the cluster."""
        node = next(n for n in self.nodes if n.port == port)
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)

    def wait_primary(self, port: int, timeout_s: float = 30) -> float:
        """Until the node on ``port`` (a replica) has been promoted to primary; returns when it
        was seen promoted (``time.monotonic()``)."""
        node = next(n for n in self.nodes if n.port == port)
        self._wait(lambda: node.client().info("replication")["role"] == "master",
                   time.monotonic() + timeout_s, f"replica {port} was not promoted")
        return time.monotonic()

    def wait_replicas_caught_up(self, timeout_s: float = 30) -> None:
        """Until every live replica has applied all its primary has written (same replication
        offset): what a primary then loses with its process, its replica still has."""
        def caught_up() -> bool:
            for primary, replica in self.topology().items():
                if replica is None:
                    continue
                written = Node(primary).client().info("replication")["master_repl_offset"]
                if Node(replica).client().info("replication")["slave_repl_offset"] != written:
                    return False
            return True

        self._wait(caught_up, time.monotonic() + timeout_s, "the replicas did not catch up")

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                node.proc.terminate()
                node.proc.wait(10)

    @staticmethod
    def _wait(ready, deadline: float, failure: str) -> None:
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ClusterNotReady(failure)
            time.sleep(0.05)


def _port(address: str) -> int:
    """The client port of a ``CLUSTER NODES`` address (``host:port@bus``)."""
    return int(address.split("@")[0].rsplit(":", 1)[1])


def _ping(node: Node) -> bool:
    return node.client().ping()
