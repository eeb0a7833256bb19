"""Realistic traffic for ``POST /v1/models/{model}/predict`` (Locust, FastHttpUser).

    python -m locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --users 32 --spawn-rate 32 --run-time 60s --customers 3000 --shape steady

Usually run through ``loadtests/loadtest.py``, which adds reports and SLO gates. Every option
below also reads a ``LOADTEST_*`` environment variable (``LOADTEST_CUSTOMERS=3000``, ...).

Traffic: customers drawn from the synced population (ids 1..--customers) with Zipf-like
popularity; mostly one entity per request, --batch-share of requests carry 10-50 entities each
with its own features; --invalid-share of requests are wrong on purpose and must get their 4xx
(named ``invalid: <code>``, counted a success when the answer is the expected one);
--canary-share is forced to the canary with ``x-mlgate-variant: canary`` (off by default; the
gateway allows it from loopback callers, or with --admin-token when it has one set).

Besides Locust's per-request rows, the stats (CSV and HTML) get synthetic rows:
``ALL valid traffic`` (every request except invalid-by-design ones: the latency and error
figures the SLOs judge) and ``ROWS rows scored`` / ``ROWS rows default`` / ``ROWS rows fallback``
(prediction rows by where their stored features came from; "Request Count" is a row count).
"""

from __future__ import annotations

import itertools
import random
import time

import orjson
import traffic  # Locust puts this file's folder on sys.path
from locust import FastHttpUser, LoadTestShape, events, task
from locust.exception import StopUser

# Synthetic stats rows; loadtest.py reads them back from the CSV by (Type, Name).
VALID = ("valid traffic", "ALL")  # (name, type) of the all-valid-traffic row
ROWS = "ROWS"  # type of the "rows scored/default/fallback" counters
JSON = {"content-type": "application/json"}
VARIANT_HEADER = "x-mlgate-variant"

_environment = None  # Locust's Environment, set at init
_population: traffic.Population | None = None
_sent = itertools.count(1)  # requests started by this process (gevent: one thread, no lock needed)
_user_numbers = itertools.count()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    def option(name: str, env: str, **kw) -> None:
        parser.add_argument(name, env_var=f"LOADTEST_{env}", **kw)

    option("--customers", "CUSTOMERS", type=int, default=100_000,
           help="customer ids 1..N are in the online store (demo: 100000, tests: 3000)")
    option("--zipf-s", "ZIPF_S", type=float, default=1.0, help="popularity skew: weight 1/rank**s")
    option("--model", "MODEL", default="fraud-detector")
    option("--shape", "SHAPE", choices=traffic.SHAPES, default="steady",
           help="steady: --users throughout; ramp: 1 -> --users over 80%% of --run-time; "
                "spike: --users/4 with a spike to --users in the middle fifth")
    option("--user-rps", "USER_RPS", type=float, default=10.0,
           help="mean requests/s of one user, Poisson arrivals (0: no pause, closed loop)")
    option("--batch-share", "BATCH_SHARE", type=float, default=0.15,
           help="share of requests with 10-50 entities")
    option("--invalid-share", "INVALID_SHARE", type=float, default=0.02,
           help="share of deliberately invalid requests")
    option("--canary-share", "CANARY_SHARE", type=float, default=0.0,
           help=f"share of valid requests sent with {VARIANT_HEADER}: canary")
    option("--admin-token", "ADMIN_TOKEN", default="",
           help="bearer token for the variant-forcing header (the gateway's admin.token)")
    option("--api-key", "API_KEY", default="",
           help="API key sent with every request (a gateway with authentication on: predict:<model>)")
    option("--max-requests", "MAX_REQUESTS", type=int, default=2_000_000,
           help="hard cap on requests per Locust process (users stop beyond it)")
    option("--seed", "SEED", type=int, default=7, help="population order and per-user randomness")


@events.init.add_listener
def _init(environment, **_) -> None:
    global _environment, _population
    _environment = environment
    opts = environment.parsed_options
    if opts is not None:
        _population = traffic.Population(opts.customers, opts.zipf_s, opts.seed)


@events.request.add_listener
def _valid_traffic(request_type, name, response_time, response_length, exception=None, **_) -> None:
    """Mirror every valid request into the ``ALL valid traffic`` row (not into Locust's total,
    which already has it), so its percentiles cover exactly the traffic the SLOs judge."""
    if request_type != "POST" or name.startswith(traffic.INVALID_PREFIX):
        return
    entry = _environment.stats.get(*VALID)
    entry.log(response_time, response_length or 0)
    if exception is not None:
        entry.log_error(exception)


def _count_rows(kind: str, n: int) -> None:
    entry = _environment.stats.get(f"rows {kind}", ROWS)
    for _ in range(n):  # one log per row keeps the row's per-second rate meaningful
        entry.log(0, 0)


def _error_code(response) -> str:
    try:
        return orjson.loads(response.content)["error"]["code"]
    except Exception:  # not our JSON error (connection error, proxy page, ...)
        return str(getattr(response, "error", "") or "")[:80]


class PredictUser(FastHttpUser):
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        self.opts = self.environment.parsed_options
        self.rng = random.Random(self.opts.seed * 1_000_003 + next(_user_numbers))
        self.path = f"/v1/models/{self.opts.model}/predict"
        key = self.opts.api_key
        self.json = {**JSON, "authorization": f"Bearer {key}"} if key else JSON
        self.next_at = time.monotonic()

    def wait_time(self) -> float:
        """Poisson arrivals at --user-rps: sleep until the next scheduled start. A user that
        fell behind by over a second re-anchors instead of bursting to catch up."""
        if self.opts.user_rps <= 0:
            return 0.0
        now = time.monotonic()
        self.next_at = max(self.next_at + self.rng.expovariate(self.opts.user_rps), now - 1.0)
        return max(0.0, self.next_at - now)

    @task
    def predict(self) -> None:
        if next(_sent) > self.opts.max_requests:
            raise StopUser()
        if self.rng.random() < self.opts.invalid_share:
            self._invalid()
        else:
            self._valid()

    def _valid(self) -> None:
        rng, opts = self.rng, self.opts
        n = rng.randint(10, 50) if rng.random() < opts.batch_share else 1
        name, headers = ("predict 1" if n == 1 else "predict batch"), self.json
        if rng.random() < opts.canary_share:
            name, headers = f"{name} [canary]", {**self.json, VARIANT_HEADER: "canary"}
            if opts.admin_token:
                headers["authorization"] = f"Bearer {opts.admin_token}"
        body = orjson.dumps(traffic.predict_body(rng, _population, n))
        with self.client.post(self.path, data=body, headers=headers, name=name,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code} {_error_code(response)}")
                return
            try:
                predictions = orjson.loads(response.content)["predictions"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                response.failure("200 without a predictions list")
                return
            if len(predictions) != n:
                response.failure(f"{len(predictions)} predictions for {n} entities")
                return
        kinds = [traffic.classify(p) for p in predictions]
        _count_rows("scored", n)
        for kind in ("default", "fallback"):
            if kinds.count(kind):
                _count_rows(kind, kinds.count(kind))

    def _invalid(self) -> None:
        body = traffic.predict_body(self.rng, _population, 1)
        status, code, raw = traffic.invalid_request(self.rng, body, orjson.dumps)
        with self.client.post(self.path, data=raw, headers=self.json, name=traffic.INVALID_PREFIX + code,
                              catch_response=True) as response:
            got = _error_code(response)
            if response.status_code == status and got == code:
                response.success()
            else:
                response.failure(f"expected {status} {code}, got HTTP {response.status_code} {got}")


class TrafficShape(LoadTestShape):
    """--shape steady|ramp|spike over --run-time, peaking at --users (see traffic.shape_users)."""

    use_common_options = True  # read --users, --spawn-rate and --run-time rather than ignore them
    cycle_s = 60.0  # ramp/spike period when no --run-time is given (the shape then repeats)

    def tick(self):
        opts = self.runner.environment.parsed_options
        t, users = self.get_run_time(), opts.num_users or 1
        if opts.run_time and t >= opts.run_time:
            return None
        total = opts.run_time or self.cycle_s
        target = traffic.shape_users(opts.shape, t % total, total, users)
        # steady honours --spawn-rate; ramp/spike move as fast as their own curve says
        rate = (opts.spawn_rate or users) if opts.shape == "steady" else max(users, 1)
        return target, rate
