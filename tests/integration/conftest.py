"""Integration fixtures: real MLflow registry (SQLite file), real redis-server, a private
PostgreSQL, real Ray Serve started through the real CLI, real HTTP. Expensive things start once
per session."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from examples.fraud import data
from serving.settings import Settings

DEMO_CUSTOMERS = 3_000
DEMO_COURIERS = 60  # the delivery example, small: tests that serve it beside the fraud model


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the ephemeral range: one that the kernel will not hand to another
    process's bind(0) meanwhile (Ray's agents pick their metrics ports that way, and one took a
    gateway's port between the test choosing it and the gateway binding it)."""
    return free_port_block(1)


def free_port_block(size: int) -> int:
    """A port P with P..P+size-1 all free (direct ingress takes consecutive ports), below the
    ephemeral range."""
    top = _ephemeral_start() - size
    for _ in range(200):
        base = random.randrange(10_000, top)
        if all(_is_free(base + i) for i in range(size)):
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
    """A private redis-server on a free port; tests may stop and restart it (same port). With
    ``tls``, it speaks TLS only, with a certificate made for 127.0.0.1 (``url`` names its CA)."""

    def __init__(self, folder: Path, password: str | None = None, tls: bool = False) -> None:
        self.port = free_port()
        self.folder = folder
        self.password = password
        self.cert = folder / "redis-cert.pem" if tls else None
        self.url = (f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.cert}" if tls
                    else f"redis://127.0.0.1:{self.port}/0")
        self.proc: subprocess.Popen | None = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, password=self.password)

    def start(self) -> None:
        import redis

        auth = ["--requirepass", self.password] if self.password else []
        listen = ["--port", str(self.port)]
        if self.cert is not None:
            key = self.folder / "redis-key.pem"
            if not self.cert.exists():
                subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                                "-out", str(self.cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                                "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.cert),
                      "--tls-key-file", str(key), "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(["redis-server", *listen, "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.folder), *auth],
                                     stdout=subprocess.DEVNULL)
        client = self.client()
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


def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's initdb and pg_ctl: on PATH, or the newest Debian version's (Debian
    keeps them in /usr/lib/postgresql/<version>/bin, off PATH)."""
    on_path = shutil.which("initdb")
    folders = [Path(on_path).resolve().parent] if on_path else []
    folders += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return next((f for f in folders if (f / "initdb").exists() and (f / "pg_ctl").exists()), None)


class PostgresServer:
    """A private PostgreSQL cluster on a free port of 127.0.0.1: superuser ``postgres`` with trust
    auth, data, log and socket in a fresh folder. initdb and postgres refuse to run as root, so as
    root the cluster belongs to the ``postgres`` system user (Debian's package creates it), or else
    to ``nobody``."""

    user = "postgres"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        # Not under pytest's basetemp: that is private to root, and a socket path must stay short.
        self.folder = Path(tempfile.mkdtemp(prefix="mlgate-pg-"))
        self.data = self.folder / "data"
        self.owner = None
        if os.geteuid() == 0:
            self.owner = next(u for u in ("postgres", "nobody") if _user_exists(u))
            shutil.chown(self.folder, self.owner, pwd.getpwnam(self.owner).pw_gid)

    def uri(self, db: str) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the postgres extra ships psycopg2.
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{db}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        ids = {}
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.folder,
                              capture_output=True, text=True, timeout=120, **ids)

    def start(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust",
                         "--no-locale", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.folder}'\nfsync = off\n")
        log = self.folder / "server.log"
        if self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "start").returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n"
                               f"{log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            stop = ("pg_ctl", "-D", str(self.data), "-w", "stop", "-m")
            if self._run(*stop, "fast").returncode != 0:
                self._run(*stop, "immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL for the session, stopped and deleted at its end."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL's server programs (initdb, pg_ctl) are neither on PATH nor in "
                    "/usr/lib/postgresql/*/bin: `.ci/system-deps --tests` installs them as root "
                    "(Debian: apt-get install postgresql)")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    """A state folder with the fraud example's data (small; where `mlgate data` writes it) and
    an MLflow SQLite registry."""
    folder = tmp_path_factory.mktemp("state")
    data.write(data.generate(n_customers=DEMO_CUSTOMERS, seed=11), folder / "data" / "fraud")
    return folder


@pytest.fixture(scope="session")
def settings(state_dir) -> Settings:
    return Settings(state_dir=state_dir, mlflow_tracking_uri=None)


@pytest.fixture(scope="session")
def examples_repo(settings):
    """The examples' feature repository (examples/), its sources in ``settings``' data folder."""
    from examples import project

    return project.load(settings)


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the whole test session."""
    from features_online import spark_job

    session = spark_job.spark_session("local[2]", app="mlgate-tests", shuffle_partitions=4)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    """A Spark standalone cluster (tests/integration/spark_cluster.py): a master and a 2-core
    worker, separate JVMs on free ports of 127.0.0.1, stopped after the module that uses it (two
    idle JVMs would otherwise sit beside the rest of the suite on two cores)."""
    from tests.integration.spark_cluster import SparkCluster

    base = free_port_block(4)  # master, master UI, worker, worker UI
    cluster = SparkCluster(tmp_path_factory.mktemp("spark-cluster"), (base, base + 1, base + 2, base + 3))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def train_table(settings, spark, examples_repo):
    """Labelled transactions with point-in-time features (the repository's training set), as
    `mlgate train` builds them: ``label``, the model's inputs (``FEATURE_NAMES``), ids and time."""
    from examples.fraud.runner import training_data

    return training_data(settings, spark, examples_repo)


@pytest.fixture(scope="session")
def champion(settings, train_table):
    """fraud-detector trained on the demo data and registered as @champion."""
    from examples.fraud.train import train_and_register

    return train_and_register(train_table, settings.tracking_uri, settings.artifact_root, alias="champion")


def apply_examples(settings: Settings, models: tuple[str, ...] = ("fraud-detector",)):
    """Apply the examples' repository, only what ``models`` need, to ``settings``' Redis and
    prefix (as `mlgate apply` would): what the CLI's jobs and the gateway then read."""
    from examples import project
    from features_online import repository
    from features_online.redis_client import connect

    client = connect(settings.redis)
    try:
        return repository.apply(client, settings.redis.prefix, project.load(settings, models=models))
    finally:
        client.close()


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


@pytest.fixture(scope="session")
def demo_redis(tmp_path_factory):
    """The demo gateway's own Redis, over TLS and password-protected: the secret and the CA must
    reach every process (the CLI's Spark jobs, the gateway's replicas)."""
    from tests.integration.demo_gateway import REDIS_PASSWORD

    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=REDIS_PASSWORD, tls=True)
    server.start()
    yield server
    server.stop()


_DEMO: list = []  # the running demo gateway, for the hook below


@pytest.fixture(scope="session")
def demo_gateway(tmp_path_factory, demo_redis, spark):
    """The shared demo gateway (tests/integration/demo_gateway.py)."""
    from tests.integration.demo_gateway import DemoGateway

    gateway = DemoGateway(tmp_path_factory.mktemp("demo-state"), demo_redis, spark)
    _DEMO.append(gateway)
    yield gateway
    gateway.stop()


def pytest_runtest_teardown(item, nextitem):
    """Stop the demo gateway after the last test that uses it (tests run file by file, and its
    users are consecutive), not at the session's end: the modules after it start Ray of their own."""
    if _DEMO and "demo_gateway" in item.fixturenames and (
            nextitem is None or "demo_gateway" not in nextitem.fixturenames):
        _DEMO.pop().stop()
