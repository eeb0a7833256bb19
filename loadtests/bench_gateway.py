"""mlgate against its floor and two peers: p50/p99 latency and req/s at concurrency 1, 8 and 32.

    .venv/bin/python loadtests/bench_gateway.py [--state-dir /tmp/mlgate-bench-state] [--duration 15]

One machine, the same registered model and features, one system at a time, each stopped after:

  mlgate     as shipped, started like `mlgate demo --detach` (launcher.start_detached): reuseport
             ingress, one gateway replica per CPU, each serving HTTP itself on the shared port;
             entity-keyed requests: the gateway reads the 12 stored features from Redis itself
  mlgate-1   the same with one replica (`--replicas 1`)
  mlgate-direct   the same with `--ingress direct`: Ray Serve direct ingress, one replica (the
             default until 2026-11-26)
  mlgate-haproxy  the same with `--ingress haproxy`: Ray Serve's HAProxy ingress in front of one
             gateway replica per CPU (in the default --systems when a haproxy binary is on PATH)
  mlgate-auth     the same as mlgate with authentication and quotas on: every request carries an
             API key (checked against the hashed key file), and passes a per-key and a per-model
             quota (GCRA in the feature store's Redis, limits too high to refuse anything: the cost
             of checking them, with the replicas' leases)
  mlgate-auth-nolease  the same with leases off (`auth.quotas.lease_max: 1`): one quota round
             trip to Redis per request
  mlgate-v2  the same as mlgate, called over the Open Inference Protocol v2 REST
             (`POST /v2/models/{m}/infer`, JSON tensors): a `customer_id` INT64 tensor (the
             entity key: the stored features are read as for mlgate) and one tensor per
             request-time input
  mlgate-log the same as mlgate with the inference log on at 100 % sampling
             (`inference_log.enabled`): every answered row recorded and written to the model's
             Redis stream (the features' redis-server) by each replica's background writer
  floor      loadtests/floor_app.py: uvicorn + FastAPI (1 worker), one HMGET, one onnxruntime call
  mlflow     `mlflow models serve --env-manager local`: all 21 features in the request
  ray-naive  loadtests/naive_serve.py: mlflow.pyfunc on Ray Serve behind its default HTTP proxy

Features live in a private redis-server on a free port, started and stopped here. Without a trained
demo in --state-dir, `mlgate demo --detach --customers N` builds one (data, Spark features synced
to that Redis, training, batch scores); with one, `mlgate features sync` and `mlgate batch score`
refill the fresh Redis. The load generator is this process (loadtests/loadgen.py): a closed-loop
asyncio HTTP/1.1 client on uvloop, one keep-alive connection per worker sending back to back for
warm-up + duration seconds; its ceiling is measured against the floor's GET /healthz at c=32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from loadtests.loadgen import call, host_busy, http, load, server_procs

VENV_BIN = Path(sys.executable).parent
MODEL = "fraud-detector"
PREDICT = f"/v1/models/{MODEL}/predict"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env or dict(os.environ), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def kill(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM to the process we started, then SIGKILL to whatever is left of its process group."""
    with suppress(ProcessLookupError, subprocess.TimeoutExpired):
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --- data, model, request bodies ----------------------------------------------------------------

def prepare(settings, env: dict[str, str], customers: int, log: Path) -> None:
    from examples import project
    from examples.registry import has_alias

    mlgate = [str(VENV_BIN / "mlgate"), "--state-dir", str(settings.state_dir)]
    if ((project.data_dir(settings, "fraud") / "transactions.parquet").exists()
            and has_alias(settings.tracking_uri, MODEL, "champion")):
        # a fresh Redis: the fraud example's repository applied, then its features and scores
        from features_online import repository
        from features_online.redis_client import connect

        client = connect(settings.redis)
        try:
            repository.apply(client, settings.redis.prefix, project.load(settings, models=(MODEL,)))
        finally:
            client.close()
        steps = [mlgate + ["features", "sync"], mlgate + ["batch", "score", "--model", f"{MODEL}@champion"]]
    else:
        steps = [mlgate + ["demo", "--detach", "--customers", str(customers), "--port", str(free_port())]]
    try:
        for cmd in steps:
            print("  $ mlgate", " ".join(cmd[3:]), flush=True)
            with open(log, "ab") as out:
                subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=True,
                               timeout=3600)
    finally:
        subprocess.run(mlgate + ["stop"], check=False, cwd=REPO, env=env, capture_output=True, timeout=120)


def model_files(settings) -> tuple[str, str, list[tuple[str, str]]]:
    """Champion version, its ONNX file (downloaded from the registry), inputs in signature order."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.models import Model

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = str(client.get_model_version_by_alias(MODEL, "champion").version)
    path = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(MODEL, version),
        dst_path=str(settings.state_dir / "bench-model" / version), tracking_uri=settings.tracking_uri))
    mlmodel = Model.load(str(path))
    inputs = [(c.name, c.type.name) for c in mlmodel.get_input_schema().inputs]
    return version, str(path / mlmodel.flavors["onnx"]["data"]), inputs


def bodies(redis_url: str, inputs, customers: int, n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """n entity-keyed bodies, and the same rows with all 21 features (stored ones read once here)."""
    import redis

    from features_online import layout
    from examples.fraud.train import VIEW
    from loadtests.traffic import transaction

    rng = random.Random(seed)
    client = redis.Redis.from_url(redis_url)
    live = int(client.hget(layout.meta_key("mlg", VIEW), "version"))
    ids = [rng.randint(1, customers) for _ in range(n)]
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(layout.bucket_key("mlg", VIEW, live, i % VIEW.buckets), [layout.field(i)])
    records, present = layout.decode(VIEW, [r[0] for r in pipe.execute()])
    assert present.all(), "some sampled customers are not in the online store"
    keyed, full = [], []
    for k, customer in enumerate(ids):
        given = transaction(rng)
        keyed.append({"entities": [{"customer_id": customer}], "features": given})
        row = {}
        for name, dtype in inputs:
            stored = name.startswith(VIEW.name + "__")
            value = records[name.split("__", 1)[1]][k] if stored else given[name]
            row[name] = int(value) if dtype == "long" else float(value)
        full.append({"dataframe_records": [row]})
    return keyed, full


# --- the systems ---------------------------------------------------------------------------------

@contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str], port: int, probe: bytes, timeout_s: float = 300):
    proc = spawn(cmd, log, env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited ({proc.returncode}); see {log}")
            try:
                if call(port, probe)[0] == 200:
                    break
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[:3]} not ready after {timeout_s:.0f}s; see {log}")
            time.sleep(0.5)
        yield [proc.pid]
    finally:
        kill(proc)


@contextmanager
def mlgate_system(state_dir: Path, port: int, ingress: str | None = None, replicas: int | None = None,
                  env: dict[str, str] | None = None):
    """The gateway as `mlgate demo --detach` starts it; ``ingress``/``replicas``: not the defaults;
    ``env``: more MLGATE_ settings for it."""
    from serving import launcher
    from serving.settings import Settings

    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        chosen = {"ingress": ingress} if ingress else {}
        settings = Settings(state_dir=state_dir, http={"port": port, **chosen})
        more = (["--ingress", ingress] if ingress else []) + (["--replicas", str(replicas)] if replicas else [])
        pid = launcher.start_detached(settings, ["--port", str(port), *more])
        try:
            yield [pid]
        finally:
            launcher.stop(settings)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_key(state: Path) -> tuple[Path, str]:
    """A key file holding one fresh key, and the header line that sends the key."""
    from serving.auth.keys import key_hash, new_key, write_keys
    from serving.auth.settings import ApiKey

    key = new_key()
    keys = state / "bench-keys.yaml"
    write_keys(keys, [ApiKey(id="bench", sha256=key_hash(key), scopes=("predict:*", "metrics"))])
    return keys, f"Authorization: Bearer {key}\r\n"


def auth_env(keys: Path, lease: bool = True) -> dict[str, str]:
    """Settings that turn authentication (``keys``) and quotas on."""
    never = json.dumps({"rate_per_s": 1e6, "burst": 1_000_000})
    env = {"MLGATE_AUTH__API_KEYS_FILE": str(keys), "MLGATE_AUTH__QUOTAS__PER_KEY": never,
           "MLGATE_AUTH__QUOTAS__PER_MODEL": json.dumps({MODEL: json.loads(never)})}
    if not lease:
        env["MLGATE_AUTH__QUOTAS__LEASE_MAX"] = "1"
    return env


def stage_totals(port: int) -> dict[str, list[float]]:
    """[seconds, count] per pipeline stage and for the whole pipeline, from mlgate's /metrics."""
    text = call(port, http("GET", port, "/metrics"))[1].decode()
    totals: dict[str, list[float]] = {}
    pattern = r'^mlgate_(stage|request)_duration_seconds_(sum|count)\{([^}]*)\} (\S+)$'
    for kind, what, labels, value in re.findall(pattern, text, re.MULTILINE):
        stage = re.search(r'stage="([^"]+)"', labels).group(1) if kind == "stage" else "pipeline"
        totals.setdefault(stage, [0.0, 0.0])[what == "count"] += float(value)
    return totals


def oip_body(keyed: dict) -> dict:
    """An entity-keyed predict body as an OIP v2 infer request: one tensor per column."""
    (entity,), features = keyed["entities"], keyed["features"]
    columns = {**entity, **features}
    return {"inputs": [{"name": name, "datatype": "INT64" if type(v) is int else "FP64", "shape": [1], "data": [v]}
                       for name, v in columns.items()]}


def probabilities(port: int, path: str, items: list[dict], headers: str = "") -> list[float]:
    out = []
    for item in items:
        status, raw = call(port, http("POST", port, path, json.dumps(item).encode(), headers))
        assert status == 200, raw[:300]
        answer = json.loads(raw)
        if "outputs" in answer:  # OIP v2
            value = next(o["data"][0] for o in answer["outputs"] if o["name"] == "probability")
        else:
            value = answer["predictions"][0]["probability"]
        out.append(round(value, 5))
    return out


# --- main ----------------------------------------------------------------------------------------

def starters(state: Path, settings, redis_url: str, onnx_file: str, inputs, model_uri: str, probe_row):
    """name -> (path, which bodies, start(port) -> context manager yielding the server's pids,
    header lines each request carries)."""
    floor_env = {**os.environ, "FLOOR_REDIS_URL": redis_url, "FLOOR_ONNX": onnx_file,
                 "FLOOR_INPUTS": ",".join(n for n, _ in inputs)}
    mlflow_env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri,
                  "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}  # it runs `uvicorn` from PATH
    ray_env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
               "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    logs = state / "bench-logs"
    ray_probe = json.dumps(probe_row).encode()  # Ray's proxy answers /-/healthz before the app is up
    keys, key = bench_key(state)
    auth, auth_nolease = auth_env(keys), auth_env(keys, lease=False)
    systems = {
        "mlgate-auth": (PREDICT, "keyed", lambda port: mlgate_system(state, port, env=auth), key),
        "mlgate-auth-nolease": (PREDICT, "keyed", lambda port: mlgate_system(state, port, env=auth_nolease), key),
    }
    return systems | {name: (*system, "") for name, system in {
        "mlgate": (PREDICT, "keyed", lambda port: mlgate_system(state, port)),
        "mlgate-v2": (f"/v2/models/{MODEL}/infer", "oip", lambda port: mlgate_system(state, port)),
        "mlgate-log": (PREDICT, "keyed", lambda port: mlgate_system(
            state, port, env={"MLGATE_INFERENCE_LOG__ENABLED": "true", "MLGATE_INFERENCE_LOG__SAMPLE": "1"})),
        "mlgate-1": (PREDICT, "keyed", lambda port: mlgate_system(state, port, "reuseport", 1)),
        "mlgate-direct": (PREDICT, "keyed", lambda port: mlgate_system(state, port, "direct")),
        "mlgate-haproxy": (PREDICT, "keyed", lambda port: mlgate_system(state, port, "haproxy")),
        "floor": (PREDICT, "keyed", lambda port: process(
            [sys.executable, "-m", "uvicorn", "loadtests.floor_app:app", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"],
            logs / "floor.log", floor_env, port, http("GET", port, "/healthz"))),
        "mlflow": ("/invocations", "full", lambda port: process(
            [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)], logs / "mlflow.log", mlflow_env, port, http("GET", port, "/ping"))),
        "ray-naive": ("/", "full", lambda port: process(
            [sys.executable, str(REPO / "loadtests" / "naive_serve.py"), model_uri, settings.tracking_uri,
             str(port)], logs / "ray-naive.log", ray_env, port, http("POST", port, "/", ray_probe))),
    }.items()}


def settle(quiet_cores: float = 0.25, limit_s: float = 30.0) -> tuple[float, float]:
    """Wait until the host is nearly idle (a started system's background work, such as Ray's
    agents or a second replica still loading, would otherwise land in its first measurement):
    until a 1 s window has at most ``quiet_cores`` busy, or ``limit_s`` passed. (seconds waited,
    cores busy in the last window)"""
    started = time.monotonic()
    while True:
        (b0, t0), _, (b1, t1) = host_busy(), time.sleep(1), host_busy()
        busy = (b1 - b0) / max(t1 - t0, 1) * psutil.cpu_count()
        if busy <= quiet_cores or time.monotonic() - started >= limit_s:
            return time.monotonic() - started, busy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", type=Path, default=Path("/tmp/mlgate-bench-state"))
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--systems", default="mlgate,mlgate-1,mlgate-direct,floor,mlflow,ray-naive"
                   + (",mlgate-haproxy" if shutil.which("haproxy") else ""))
    p.add_argument("--requests", type=int, default=5000, help="distinct request bodies, cycled through")
    args = p.parse_args()
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    levels = [int(c) for c in args.concurrency.split(",")]
    state = args.state_dir.expanduser().resolve()
    (state / "bench-logs").mkdir(parents=True, exist_ok=True)
    began = datetime.now().astimezone()
    results: dict[tuple[str, int], dict] = {}
    notes: list[str] = []
    (b0, t0), _, (b1, t1) = host_busy(), time.sleep(3), host_busy()
    notes.append(f"before the run, other processes kept {(b1 - b0) / (t1 - t0) * psutil.cpu_count():.2f} "
                 f"of {psutil.cpu_count()} cores busy "
                 f"(load average {os.getloadavg()[0]:.2f})")
    print(f"bench_gateway started {began:%Y-%m-%d %H:%M:%S %Z}; {notes[-1]}", flush=True)
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ.update(MLGATE_REDIS__URL=redis_url, MLGATE_HTTP__PROXY_PORT=str(free_port()))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    redis_proc = spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(state)], state / "bench-logs" / "redis.log")
    try:
        from serving.settings import Settings

        time.sleep(0.5)
        settings = Settings(state_dir=state)
        print(f"preparing demo state in {state} (private Redis on :{redis_port}) ...", flush=True)
        prepare(settings, dict(os.environ), args.customers, state / "bench-logs" / "prepare.log")
        version, onnx_file, inputs = model_files(settings)
        items = dict(zip(("keyed", "full"), bodies(redis_url, inputs, args.customers, args.requests, seed=42)))
        items["oip"] = [oip_body(b) for b in items["keyed"]]
        print(f"model {MODEL} v{version}: {len(inputs)} inputs; {args.requests} request bodies", flush=True)
        systems = starters(state, settings, redis_url, onnx_file, inputs, f"models:/{MODEL}/{version}",
                           items["full"][0])
        for name in args.systems.split(","):
            path, kind, start, headers = systems[name]
            port = free_port()
            print(f"\n== {name} (port {port})", flush=True)
            try:
                with start(port) as roots:
                    notes.append(f"{name}: p(fraud) of the first 4 bodies {probabilities(port, path, items[kind][:4], headers)}")
                    notes.append(f"{name}: busy processes (name, nice) "
                                 f"{sorted({(n, ni) for n, ni, cpu in server_procs(roots).values() if cpu > 0.5})}")
                    print("\n".join(notes[-2:]), flush=True)
                    settled_s, residual = settle()
                    notes.append(f"{name}: host settled after {settled_s:.0f} s of waiting "
                                 f"({residual:.2f} cores busy before the load)")
                    print(notes[-1], flush=True)
                    raw = [http("POST", port, path, json.dumps(b).encode(), headers) for b in items[kind]]
                    watched = roots + ([redis_proc.pid] if kind != "full" else [])
                    for c in levels:
                        before = stage_totals(port) if name == "mlgate" else None
                        r = results[(name, c)] = asyncio.run(load(port, raw, c, args.warmup, args.duration, watched))
                        if before is not None:  # mean ms per stage over warm-up + run (cumulative metrics)
                            r["stages_ms"] = {k: round(1000 * (t - before.get(k, [0, 0])[0])
                                                       / max(n - before.get(k, [0, 0])[1], 1), 3)
                                              for k, (t, n) in stage_totals(port).items()}
                        print(f"  c={c:>2}  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  {r['rps']:8.1f} req/s  "
                              f"errors {r['errors']}  generator {r['gen_cores']:.2f} cores  host busy "
                              f"{r['host_busy']:.2f}  top processes (cores) {r['top_procs']}"
                              + (f"\n        mlgate stage means (ms): {r['stages_ms']}" if before else ""), flush=True)
                    if name == "mlgate-log":  # the rows the replicas recorded, as their metrics count them
                        time.sleep(1)  # one flush interval: the last rows written
                        text = call(port, http("GET", port, "/metrics"))[1].decode()
                        counts = {o: sum(float(v) for v in re.findall(
                            rf'^mlgate_inference_log_rows_total\{{[^}}]*outcome="{o}"[^}}]*\}} (\S+)$', text, re.MULTILINE))
                            for o in ("written", "dropped_buffer", "dropped_backlog")}
                        notes.append(f"{name}: inference log rows {counts}")
                        print(notes[-1], flush=True)
                    if name == "floor":
                        r = results[("ceiling", 32)] = asyncio.run(load(
                            port, [http("GET", port, "/healthz")], 32, args.warmup, args.duration, roots))
                        print(f"  generator ceiling (GET /healthz, c=32): {r['rps']:.0f} req/s, "
                              f"generator {r['gen_cores']:.2f} cores, p50 {r['p50']:.2f} ms", flush=True)
            except Exception as exc:  # noqa: BLE001 - one failing system must not lose the others
                traceback.print_exc()
                notes.append(f"{name}: FAILED ({exc!r}); see {state / 'bench-logs'}")
    finally:
        kill(redis_proc)
    report(results, levels, notes, began, datetime.now().astimezone(), state)


def report(results, levels, notes, began, ended, state: Path) -> None:
    print(f"\nrun {began:%Y-%m-%d %H:%M}-{ended:%H:%M %Z} ({(ended - began).total_seconds() / 60:.1f} min)\n")
    print("| system | concurrency | p50 ms | p99 ms | req/s | errors | p50 / floor | req/s / floor "
          f"| server CPU ms/req | generator cores | host busy (of {psutil.cpu_count()} cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, c), r in results.items():
        f = results.get(("floor", c))
        vs = f"{r['p50'] / f['p50']:.2f}x | {r['rps'] / f['rps']:.2f}x" if f else " | "
        if name != "ceiling":
            print(f"| {name} | {c} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:,.0f} | {r['errors']} | {vs} "
                  f"| {r['server_cpu_ms']:.2f} | {r['gen_cores']:.2f} | {r['host_busy']:.2f} |")
    lo, hi = min(levels), max(levels)

    def ratio(a, b, c, key):
        return results[(a, c)][key] / results[(b, c)][key] if (a, c) in results and (b, c) in results else float("nan")

    print()
    for ours in ("mlgate", "mlgate-1", "mlgate-direct", "mlgate-haproxy"):
        if not any(n == ours for n, _ in results):
            continue
        print(f"- {ours} p50 / floor p50 at c={lo}: {ratio(ours, 'floor', lo, 'p50'):.2f}x (target: at most 2x)")
        print(f"- {ours} req/s / floor req/s at c={hi}: {ratio(ours, 'floor', hi, 'rps'):.2f}x (target: at least 0.7x)")
        print(f"- {ours} req/s / mlflow models serve req/s at c={hi}: {ratio(ours, 'mlflow', hi, 'rps'):.2f}x "
              "(target: at least 3x)")
    if ("mlgate-v2", lo) in results and ("mlgate", lo) in results:
        print(f"- mlgate-v2 (OIP REST) p50 / mlgate p50 at c={lo}: {ratio('mlgate-v2', 'mlgate', lo, 'p50'):.2f}x "
              f"(target: at most 1.2x); req/s at c={hi}: {ratio('mlgate-v2', 'mlgate', hi, 'rps'):.2f}x")
    if ("mlgate-log", hi) in results and ("mlgate", hi) in results:
        print(f"- mlgate-log (inference log at 100 %) req/s / mlgate req/s at c={hi}: "
              f"{ratio('mlgate-log', 'mlgate', hi, 'rps'):.2f}x (target: at least 0.9x); "
              f"p50 at c={lo}: {ratio('mlgate-log', 'mlgate', lo, 'p50'):.2f}x")
    for secured in ("mlgate-auth", "mlgate-auth-nolease"):
        if (secured, hi) in results and ("mlgate", hi) in results:
            print(f"- {secured} req/s / mlgate req/s at c={hi}: {ratio(secured, 'mlgate', hi, 'rps'):.2f}x "
                  f"(target: at least 0.9x); p50 at c={lo}: {ratio(secured, 'mlgate', lo, 'p50'):.2f}x")
    if ("ceiling", 32) in results:
        r = results[("ceiling", 32)]
        print(f"- generator ceiling (GET /healthz of the floor app, c=32): {r['rps']:,.0f} req/s "
              f"with the generator on {r['gen_cores']:.2f} cores")
    print("\n" + "\n".join(f"- {n}" for n in notes))
    out = state / "bench-gateway-results.json"
    out.write_text(json.dumps({f"{n}@{c}": r for (n, c), r in results.items()}, indent=1, default=str))
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
