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

from serving.demo import data
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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server on a free port, owned by this test session."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


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
def champion(settings):
    """fraud-detector trained on the demo data and registered as @champion."""
    from serving.demo.train import train_and_register

    return train_and_register(data.read(settings.state_dir / "data"), settings.tracking_uri,
                              settings.artifact_root, alias="champion")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)
