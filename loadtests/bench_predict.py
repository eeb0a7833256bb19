"""Sequential predict latency of a running gateway: p50/p90/p99 over N calls, one connection.

    python loadtests/bench_predict.py --url http://127.0.0.1:8000 --calls 1000
    python loadtests/bench_predict.py --compare-ingress   # starts the demo gateway three times

``--compare-ingress`` measures the same model and request, in one run, through each ingress of
``mlgate serve``: ``reuseport`` (the default: uvicorn inside each replica on one shared port),
``direct`` (Ray Serve direct ingress, what the Helm chart runs) and ``proxy`` (Ray's default HTTP
proxy), and prints them side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx


def example_body(client: httpx.Client, base: str, model: str) -> dict:
    detail = client.get(f"{base}/v1/models/{model}").raise_for_status().json()
    return detail["example_request"]


def measure(base: str, model: str, calls: int, warmup: int = 200) -> dict[str, float]:
    with httpx.Client(timeout=10) as client:
        body = example_body(client, base, model)
        endpoint = f"{base}/v1/models/{model}/predict"
        for _ in range(warmup):
            client.post(endpoint, json=body).raise_for_status()
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            response = client.post(endpoint, json=body)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {"calls": calls, "p50": ms[len(ms) // 2], "p90": ms[int(len(ms) * 0.9)],
            "p99": ms[int(len(ms) * 0.99)], "mean": statistics.fmean(ms), "max": ms[-1]}


def row(name: str, r: dict[str, float]) -> str:
    return (f"| {name:<28} | {r['calls']:>5} | {r['p50']:>7.3f} | {r['p90']:>7.3f} | {r['p99']:>7.3f} "
            f"| {r['mean']:>7.3f} |")


HEADER = ("| path                         | calls | p50 ms  | p90 ms  | p99 ms  | mean ms |\n"
          "|------------------------------|-------|---------|---------|---------|---------|")


INGRESSES = {"reuseport": "mlgate reuseport (default)", "direct": "Ray Serve direct ingress",
             "proxy": "Ray Serve HTTP proxy"}


def compare_ingress(calls: int, port: int) -> None:
    """Start the demo gateway with each ingress in turn (same state dir, same model)."""
    from serving import launcher
    from serving.settings import Settings

    results = {}
    for ingress in INGRESSES:
        settings = Settings(http={"port": port, "ingress": ingress})
        launcher.start_detached(settings, ["--port", str(port), "--ingress", ingress])
        try:
            results[ingress] = measure(f"http://127.0.0.1:{port}", "fraud-detector", calls)
        finally:
            launcher.stop(settings)
    print(HEADER)
    for ingress, name in INGRESSES.items():
        print(row(name, results[ingress]))
    base = results["reuseport"]["p50"]
    print("\np50 against the default: " + ", ".join(
        f"{ingress} {results[ingress]['p50'] / base:.2f}x" for ingress in INGRESSES))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="fraud-detector")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--compare-ingress", action="store_true")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    if args.compare_ingress:
        compare_ingress(args.calls, args.port)
    else:
        print(HEADER)
        print(row(args.url, measure(args.url, args.model, args.calls)))


if __name__ == "__main__":
    main()
