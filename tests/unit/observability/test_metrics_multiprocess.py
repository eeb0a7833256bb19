"""Several replica processes, one scrape: prometheus-client's multiprocess mode as mlgate uses it."""

import os
import subprocess
import sys
import textwrap

from prometheus_client.parser import text_string_to_metric_families

REPLICA = textwrap.dedent("""
    import sys
    from observability.metrics import GatewayMetrics
    m = GatewayMetrics()
    for _ in range(int(sys.argv[1])):
        m.observe_request("fraud-detector", "1", "ok", 0.001, rows=1)
    m.model_loaded("fraud-detector", "champion", "1", 0.5)
    if sys.argv[2] == "stay":  # a live replica: serving until the test closes its stdin
        print("ready", flush=True)
        sys.stdin.read()
    else:  # a replica that lost its model, then died without a word (killed, out of memory)
        m.model_failed("fraud-detector", "champion", serving=False)
""")


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_one_scrape_sums_every_replicas_counters_and_forgets_dead_ones(tmp_path, monkeypatch):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", REPLICA, "4", "die"], env=env, check=True)
    live = subprocess.Popen([sys.executable, "-c", REPLICA, "3", "stay"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline().strip() == "ready"
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        from observability.metrics import GatewayMetrics

        seen = samples(GatewayMetrics().render())
    finally:
        live.communicate("", timeout=30)
    ok = (("model", "fraud-detector"), ("outcome", "ok"), ("version", "1"))
    assert seen[("mlgate_requests_total", ok)] == 7  # counters keep the dead replica's requests
    assert seen[("mlgate_request_duration_seconds_count", (("model", "fraud-detector"), ("outcome", "ok")))] == 7
    # livemin over live replicas only: the dead one's 0 no longer holds the model "not ready"
    assert seen[("mlgate_model_ready", (("model", "fraud-detector"),))] == 1
    assert seen[("mlgate_model_load_seconds", (("model", "fraud-detector"), ("version", "1")))] == 0.5


def test_without_the_folder_a_process_renders_its_own_registry(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    from observability.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    metrics.observe_request("m", "1", "ok", 0.001)
    assert samples(metrics.render())[("mlgate_requests_total", (("model", "m"), ("outcome", "ok"), ("version", "1")))] == 1
