"""Integration fixtures: real MLflow registry (SQLite file), real redis-server, real Ray Serve
started through the real CLI, real HTTP. Expensive things start once per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples.fraud import data
from serving.settings import Settings

DEMO_CUSTOMERS = 3_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(size: int) -> int:
    """A port P with P..P+size-1 all free (direct ingress takes consecutive ports)."""
    for _ in range(50):
        base = free_port()
        if base + size < 65535 and all(_is_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no free port block")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """A private redis-server on a free port; tests may stop and restart it (same port)."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.folder = folder
        self.password = password
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.folder), *auth],
                                     stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    """A state folder with demo data (small) and an MLflow SQLite registry."""
    folder = tmp_path_factory.mktemp("state")
    data.write(data.generate(n_customers=DEMO_CUSTOMERS, seed=11), folder / "data")
    return folder


@pytest.fixture(scope="session")
def settings(state_dir) -> Settings:
    return Settings(state_dir=state_dir, mlflow_tracking_uri=None)


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the whole test session."""
    from features_online import spark_job

    session = spark_job.spark_session("local[2]", app="mlgate-tests", shuffle_partitions=4)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def train_table(settings, spark):
    """Labelled transactions with point-in-time features, as `mlgate train` builds them."""
    from examples.fraud.runner import training_data

    return training_data(settings, spark)


@pytest.fixture(scope="session")
def champion(settings, train_table):
    """fraud-detector trained on the demo data and registered as @champion."""
    from examples.fraud.train import train_and_register

    return train_and_register(train_table, settings.tracking_uri, settings.artifact_root, alias="champion")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def gateway_env(state: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """Environment of an `mlgate` command run by a test: its own state folder, Redis and ports."""
    return {
        "MLGATE_STATE_DIR": str(state),
        "MLGATE_REDIS__URL": redis_url,
        "MLGATE_HTTP__PORT": str(free_port_block(4)),
        "MLGATE_HTTP__PROXY_PORT": str(free_port()),
        "MLGATE_SPARK__MASTER": "local[2]",
        "MLFLOW_TRACKING_URI": "",
        **extra,
    }
