"""Start the gateway on Ray Serve from a Serve config file plus mlgate settings.

``mlgate serve`` = what ``serve run serve.yaml`` does, with the ingress mode, ports and
application args filled in from :class:`Settings`, and a wait for ``/readyz``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from observability.metrics import MULTIPROC_ENV
from serving.auth.authenticator import InsecureExposure, check_exposure
from serving.errors import CommandFailed, UsageError
from serving.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).parent / "config" / "serve.yaml"
GATEWAY = "Gateway"  # the ingress deployment's name (serving/ray_app.py)
# Ingress modes in which several replicas answer on one public port.
SHARED_PORT = ("reuseport", "haproxy")
# Direct-ingress replicas take consecutive ports from the public one, one per replica on a node.
DIRECT_INGRESS_PORTS = 16


def read_config(path: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    if len(config.get("applications", [])) != 1:
        raise ValueError(f"{path}: mlgate expects exactly one application")
    return config


def app_args(config: dict[str, Any]) -> dict[str, Any]:
    """The application args of a Serve config: Settings fields the file sets."""
    return dict(config["applications"][0].get("args") or {})


def ray_environment(settings: Settings) -> dict[str, str]:
    """Environment Ray must start with for the chosen ingress (read by Serve's controller)."""
    tuning = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if settings.ray.throughput_optimized else "0"}
    http = settings.http
    if http.ingress in ("proxy", "reuseport"):  # reuseport: the replicas serve HTTP themselves
        return {**tuning, "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    first = http.port + 1 if http.ingress == "haproxy" else http.port  # HAProxy takes the public one
    direct = {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + DIRECT_INGRESS_PORTS),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(http.drain_s),
    }
    if http.ingress == "direct":
        return {**tuning, **direct}
    return {
        **tuning, **direct,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": shutil.which("haproxy") or "",
        # Ray's HAProxy metrics parse one log line per request in a Python actor; the gateway
        # already counts every request itself (observability/metrics.py).
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    }


def usable_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container
    limited to 2 CPUs on a 64-core host must not start 64 replicas)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def gateway_replicas(settings: Settings) -> int | None:
    """Replicas of the gateway when settings decide them (None: the Serve config's own)."""
    if settings.http.replicas is not None:
        return settings.http.replicas
    return usable_cpus() if settings.http.ingress in SHARED_PORT else None


def resolved_config(config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The Serve config with ports, app name, gateway replicas and the full settings as
    application args."""
    resolved = {**config, "http_options": dict(config.get("http_options") or {})}
    http = resolved["http_options"]
    http["host"] = settings.http.host
    own_port = settings.http.ingress in ("direct", "reuseport")  # Ray's proxy goes elsewhere
    http["port"] = settings.http.proxy_port if own_port else settings.http.port
    app = dict(config["applications"][0])
    app["name"] = settings.ray.app_name
    app["args"] = settings.without_secrets()
    if settings.http.ingress in SHARED_PORT:  # a scrape reaches any replica: each renders all
        runtime_env = dict(app.get("runtime_env") or {})
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}),
                                   MULTIPROC_ENV: str(metrics_dir(settings))}
        app["runtime_env"] = runtime_env
    replicas = gateway_replicas(settings)
    if replicas is not None:
        app["deployments"] = [_with_replicas(d, replicas) if d.get("name") == GATEWAY else d
                              for d in app.get("deployments") or [{"name": GATEWAY}]]
    resolved["applications"] = [app]
    return resolved


def metrics_dir(settings: Settings) -> Path:
    """Where the replicas of this node keep their metric values (observability/metrics.py):
    one scrape of any replica then shows all of them."""
    return (settings.state_dir / "metrics" / settings.ray.app_name).resolve()


def fresh_metrics_dir(settings: Settings) -> None:
    """Empty the metrics folder: values of a previous run must not add to this one's."""
    folder = metrics_dir(settings)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _with_replicas(deployment: dict[str, Any], replicas: int) -> dict[str, Any]:
    """A fixed number of gateway replicas, each asking Ray for a share of a CPU so that they fit
    beside the model deployments (a scheduling hint: a replica still uses what it needs)."""
    fixed = {**deployment, "num_replicas": replicas}
    fixed.pop("autoscaling_config", None)
    options = dict(fixed.get("ray_actor_options") or {})
    if replicas > 1:
        options["num_cpus"] = min(float(options.get("num_cpus", 1)), 0.5)
    fixed["ray_actor_options"] = options
    return fixed


def url(settings: Settings, path: str = "") -> str:
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host
    scheme = "https" if settings.http.tls_certfile else "http"
    return f"{scheme}://{host}:{settings.http.port}{path}"


def wait_ready(settings: Settings, timeout_s: float, alive=lambda: True) -> None:
    """Poll /readyz until 200; raise CommandFailed if ``alive()`` turns False or time runs out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise CommandFailed("the gateway process exited before it was ready")
        try:
            # this host's own gateway, whatever name its certificate carries; no secret is sent
            response = httpx.get(url(settings, "/readyz"), timeout=2.0, verify=False)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise CommandFailed(f"gateway not ready after {timeout_s:.0f}s ({last[:200]})")


def serve_forever(settings: Settings, config: dict[str, Any], ready_timeout_s: float = 300,
                  quiet: bool = True) -> None:
    """Start (or join) Ray, deploy the application, wait until ready, block until signalled.

    ``quiet``: Ray's and Serve's INFO lines (the startup banner, deployments coming up) stay out
    of the terminal; Ray keeps them in its session folder (``/tmp/ray/session_latest/logs``), the
    workers' output too (``log_to_driver=False``). Warnings and errors still show."""
    import ray
    from ray.serve._private import (
        api as serve_api,  # what `serve run CONFIG` itself calls
    )
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    try:
        for host in settings.bind_hosts():
            check_exposure(host, settings.auth)
    except InsecureExposure as exc:
        raise UsageError(str(exc)) from None
    if settings.http.ingress == "haproxy" and not shutil.which("haproxy"):
        raise CommandFailed("http.ingress haproxy needs the haproxy binary on PATH "
                            "(Debian/Ubuntu: apt-get install haproxy)")
    if settings.ray.address is None:
        os.environ.update(ray_environment(settings))
    else:
        log.warning("joining Ray at %s: its nodes must run with %s", settings.ray.address,
                    " ".join(f"{k}={v}" for k, v in ray_environment(settings).items()))
    schema = ServeDeploySchema.model_validate(resolved_config(config, settings))
    fresh_metrics_dir(settings)
    level = logging.WARNING if quiet else logging.INFO
    logging.getLogger("ray.serve").setLevel(level)
    ray.init(address=settings.ray.address, num_cpus=settings.ray.num_cpus, logging_level=level,
             namespace="serve", include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        client = serve_api.serve_start(
            http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
            grpc_options=gRPCOptions(**schema.grpc_options.model_dump()))
        client.deploy_apps(schema, _blocking=False)
        wait_ready(settings, ready_timeout_s, alive=lambda: not stop.is_set())
        print(f"mlgate serving on {url(settings)} ({settings.http.ingress} ingress)", flush=True)
        stop.wait()
    finally:
        from ray import serve

        try:
            serve.delete(settings.ray.app_name)
        finally:
            if settings.ray.address is None:
                serve.shutdown()
            ray.shutdown()


# -- a gateway in the background (``mlgate demo --detach``, ``mlgate stop``) -----------------------

def pid_file(settings: Settings) -> Path:
    return settings.state_dir / "gateway.pid"


def start_detached(settings: Settings, serve_args: list[str], ready_timeout_s: float = 300) -> int:
    """``mlgate serve`` in the background; returns its pid once /readyz says ready."""
    if is_running(settings):
        raise CommandFailed(f"a gateway is already running (pid file {pid_file(settings)}); "
                           "run `mlgate stop` first")
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "gateway.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", *serve_args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "MLGATE_STATE_DIR": str(settings.state_dir)},
                                start_new_session=True)
    pid_file(settings).write_text(str(proc.pid))
    try:
        wait_ready(settings, ready_timeout_s, alive=lambda: proc.poll() is None)
    except Exception:
        stop(settings)
        raise CommandFailed(f"the gateway did not start; see {logs / 'gateway.log'}") from None
    return proc.pid


def _alive(pid: int) -> bool:
    """True while ``pid`` runs. Reaps it if it is our exited child (else it would linger as a
    zombie that signal 0 still reaches, and ``stop`` would wait its full timeout)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: `mlgate stop` from another shell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def is_running(settings: Settings) -> bool:
    path = pid_file(settings)
    try:
        if _alive(int(path.read_text())):
            return True
    except (FileNotFoundError, ValueError):
        return False
    path.unlink(missing_ok=True)
    return False


def stop(settings: Settings, timeout_s: float = 60) -> bool:
    """Stop a detached gateway (SIGTERM, then SIGKILL of its process group). False if none."""
    path = pid_file(settings)
    if not path.exists():
        return False
    pid = int(path.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.25)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    path.unlink(missing_ok=True)
    return True
