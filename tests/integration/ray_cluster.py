"""A Ray cluster of several real nodes on this one machine, started with the Ray CLI.

Each node is its own ``ray start`` (a head, then workers that join it): its own raylet, object
manager and agents, on ports of its own (on one host the defaults of two nodes would collide), in a
temp dir of its own (short: Ray's socket paths must fit in 107 bytes), and in a process session of
its own, so that a node can be killed whole, as a machine that disappears, and nothing of it is left
behind at the end. ``ray stop`` is never used: it stops every Ray process of the machine, other
users' and other test sessions' included.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.integration.conftest import free_port, free_port_block

RAY = str(Path(sys.executable).with_name("ray"))
REPO = str(Path(__file__).resolve().parents[2])
WORKER_PORTS = 64  # per node: Ray's default range (10002-19999) overlaps the ports tests pick


class RayNode:
    """One ``ray start`` and every process it left running (its process group)."""

    def __init__(self, name: str, pgid: int, temp_dir: Path, node_manager_port: int) -> None:
        self.name = name
        self.pgid = pgid
        self.temp_dir = temp_dir
        self.node_manager_port = node_manager_port

    def processes(self) -> list[psutil.Process]:
        """The node's processes: its process group, and anything else naming its temp dir."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(proc.pid) == self.pgid or str(self.temp_dir) in " ".join(proc.info["cmdline"] or ()):
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                pass
        return found

    def kill(self, timeout_s: float = 30) -> None:
        """SIGKILL every process of the node (raylet, agents, workers, the head's GCS) and wait
        until they are gone: the node is lost, nothing of it shuts down cleanly."""
        deadline = time.monotonic() + timeout_s
        while (procs := self.processes()) and time.monotonic() < deadline:
            for proc in procs:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=2)
        if procs:
            raise RuntimeError(f"{self.name}: processes survived SIGKILL: {[p.pid for p in procs]}")


class RayCluster:
    """A head and any number of worker nodes; ``env`` is what every node's processes run with
    (Ray Serve reads its ingress settings from the environment of the controller and replicas).

    Ray's token authentication is off, said explicitly (``client_env``, for drivers that join):
    left unset, a head turns it on when the machine has a ``~/.ray/auth_token`` and a joining
    ``ray start --address`` does not, and then cannot join. Every port is on this host only."""

    client_env = {"RAY_AUTH_MODE": "disabled"}

    def __init__(self, env: dict[str, str], cpus_per_node: int = 1) -> None:
        self.env = {**os.environ, **env, **self.client_env, "RAY_USAGE_STATS_ENABLED": "0",
                    # the replicas import mlgate from this checkout, whatever the cwd Ray gives them
                    "PYTHONPATH": os.pathsep.join(filter(None, (REPO, os.environ.get("PYTHONPATH"))))}
        self.cpus = cpus_per_node
        self.gcs_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.nodes: list[RayNode] = []
        self._taken = {self.gcs_port}

    def _port(self) -> int:
        """A free port no other component of this cluster was given (Ray refuses duplicates)."""
        while (port := free_port()) in self._taken:
            pass
        self._taken.add(port)
        return port

    def _worker_ports(self) -> tuple[int, int]:
        while True:
            first = free_port_block(WORKER_PORTS)
            block = set(range(first, first + WORKER_PORTS))
            if not block & self._taken:
                self._taken |= block
                return first, first + WORKER_PORTS - 1

    def start_node(self) -> RayNode:
        """Start the head (the first call) or a worker that joins it; returns once it is up."""
        head = not self.nodes
        name = "head" if head else f"worker-{len(self.nodes)}"
        temp_dir = Path(tempfile.mkdtemp(prefix=f"mlg-ray-{name}-"))
        node_manager_port = self._port()
        min_worker, max_worker = self._worker_ports()
        args = [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
                "--temp-dir", str(temp_dir), "--disable-usage-stats",
                "--node-manager-port", str(node_manager_port), "--object-manager-port", str(self._port()),
                "--metrics-export-port", str(self._port()), "--runtime-env-agent-port", str(self._port()),
                "--dashboard-agent-listen-port", str(self._port()),
                "--dashboard-agent-grpc-port", str(self._port()),
                "--min-worker-port", str(min_worker), "--max-worker-port", str(max_worker)]
        if head:
            args += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                     "--ray-client-server-port", str(self._port())]
        else:
            args += ["--address", self.address]
        proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        node = RayNode(name, proc.pid, temp_dir, node_manager_port)
        self.nodes.append(node)  # a half-started node is still stopped at the end
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            node.kill()
            raise RuntimeError(f"`ray start` for the {name} did not finish in 180 s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"`ray start` for the {name} failed:\n{out[-3000:]}")
        return node

    def stop(self) -> None:
        """Kill every node, workers first, and delete their temp dirs."""
        for node in reversed(self.nodes):
            try:
                node.kill()
            finally:
                shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes = []
