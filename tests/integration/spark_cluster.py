"""A Spark standalone cluster on this machine, for the integration tests: a master and one worker,
each a JVM of its own started with the installed pyspark's ``bin/spark-class``, bound to
127.0.0.1 on free ports.

A job submitted to its ``spark://`` URL runs as on any cluster: the worker starts an executor JVM
per application, and that executor forks its own Python workers (this venv's interpreter, with the
repository on ``PYTHONPATH`` so they import mlgate from this checkout, not from wherever the venv's
editable install points). Only the filesystem is shared with the driver, which is what a real
cluster gets from shared storage: the jobs read and write Parquet by path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def spark_home() -> Path:
    """The pip-installed pyspark's folder: a complete Spark distribution (jars, bin, sbin)."""
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    missing = [d for d in ("bin", "sbin", "jars") if not (home / d).is_dir()]
    if missing:
        raise RuntimeError(f"pyspark at {home} has no {', '.join(missing)}: not a Spark distribution")
    return home


class SparkCluster:
    """A master and a worker (``cores``, ``memory``), logs and the worker's work folder (one folder
    per application and executor, with the executor's stdout/stderr) under ``folder``."""

    def __init__(self, folder: Path, ports: tuple[int, int, int, int], cores: int = 2, memory: str = "2g") -> None:
        self.folder = folder
        self.master_port, self.master_ui_port, self.worker_port, self.worker_ui_port = ports
        self.cores, self.memory = cores, memory
        self.work_dir = folder / "work"
        self.url = f"spark://127.0.0.1:{self.master_port}"
        self.ui = f"http://127.0.0.1:{self.master_ui_port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        """What the JVMs and the executors they start inherit."""
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
                "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": path,
                # The master and the worker hold no data and do little: a small heap, quick JIT.
                "SPARK_DAEMON_MEMORY": "512m", "SPARK_DAEMON_JAVA_OPTS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
                # its REST submission server would take the fixed port 6066: jobs come by spark://
                "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}

    def _spawn(self, name: str, main_class: str, *args: str) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        # A session of its own: stop() ends the JVM and every executor and Python worker it started.
        self.procs[name] = subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), main_class, *args], env=self.env(), cwd=self.folder,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start(self, timeout_s: float = 60) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.master_port), "--webui-port", str(self.master_ui_port))
        deadline = time.monotonic() + timeout_s
        # The worker only once the master listens: a worker that finds no master retries its
        # registration 5 to 15 s later.
        self._wait(lambda: _listens(self.master_port), deadline, "the master did not start")
        self._spawn("worker", "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                    "--port", str(self.worker_port), "--webui-port", str(self.worker_ui_port),
                    "--cores", str(self.cores), "--memory", self.memory, "--work-dir", str(self.work_dir))
        self._wait(lambda: any(w["state"] == "ALIVE" for w in (self.state() or {}).get("workers", ())),
                   deadline, "the worker did not register with the master")

    def _wait(self, ready, deadline: float, failure: str) -> None:
        while time.monotonic() < deadline:
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead:
                raise RuntimeError(f"{failure}: the {dead[0]} exited\n{self.log_tail(dead[0])}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{failure} in time\n" + "\n".join(self.log_tail(n) for n in self.procs))

    def state(self) -> dict | None:
        """The master's JSON (workers, cores, active and completed applications), None until it answers."""
        try:
            with urllib.request.urlopen(f"{self.ui}/json/", timeout=2) as answer:
                return json.load(answer)
        except OSError:
            return None

    def applications(self) -> list[dict]:
        """Every application the master has seen, running or finished."""
        state = self.state() or {}
        return [*state.get("activeapps", ()), *state.get("completedapps", ())]

    def executor_logs(self, app_id: str) -> list[Path]:
        """The stderr of each executor the worker ran for ``app_id``."""
        return sorted((self.work_dir / app_id).glob("*/stderr"))

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.folder / f"{name}.log"
        return f"--- {path}:\n{path.read_text(errors='replace')[-chars:]}" if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to each process group (the worker's first: it stops its executors), SIGKILL to
        whatever of the group is left after 15 s."""
        for name in ("worker", "master"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)  # an executor or Python worker left behind
            proc.wait(10)


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group is gone
        pass
