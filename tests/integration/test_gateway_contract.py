"""The OpenAPI document is a contract the live gateway keeps: schemathesis with every check, run
against a gateway the real CLI started (issue 13, item 5).

Bounded: 100 examples per operation, one worker, on 127.0.0.1 only; the run takes about 15 s
after the gateway is up. The PATCH of the admin API runs too: the shared demo gateway has no canary
or shadow serving, so a change is a conflict (409), an unknown shadow (404), or a no-op.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.integration.demo_gateway import ADMIN_TOKEN, MODEL, PYFUNC

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 100
OPERATIONS = 26  # mlgate's 10 (feedback included), and the other protocols' 16

# What each check accepts beyond schemathesis' defaults, and why:
# - a too-long list is refused with 413 (too_many_instances), which is a refusal like 400;
# - the document cannot know each model's feature names and entity keys, so a body it allows may
#   still be refused by the model's signature: 400 (unknown or mistyped feature), 422 (missing);
# - a body may set its own deadline from 1 ms: the 504 that follows is documented and retryable.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]

[dictionaries.models]
values = {models}

[parameters]
"path.name" = {{ dictionary = "models", probability = 0.7 }}
"path.model" = {{ dictionary = "models", probability = 0.7 }}

[[operations]]
include-path = "/v1/models/{{name}}/predict"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 422, 429, "5xx"]
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", 504]
{protocols}"""
# The other protocols' predict paths: the same, and their bodies are as loosely typed as the
# protocols (a tensor's data, MLflow's frames), so a body the document allows is often refused.
PROTOCOL_PATHS = ("/v2/models/{{name}}/infer", "/v2/models/{{name}}/versions/{{version}}/infer",
                  "/v1/models/{{name}}/invocations", "/invocations", "/serving-endpoints/{{name}}/invocations",
                  "/v1/models/{{name}}:predict")
PROTOCOLS = "".join(f"""
[[operations]]
include-path = "{path}"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 413, 415, 422, 429, "5xx"]
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", 504]
""" for path in PROTOCOL_PATHS)


@pytest.fixture(scope="module")
def gateway(demo_gateway):
    """The session's demo gateway (tests/integration/demo_gateway.py), shared with test_gateway and
    test_gateway_protocols to keep CI inside its budget: its models have no canary or shadow
    serving, so schemathesis' rollout PATCHes are conflicts (409), unknown shadows (404) or no-ops
    and leave nothing the modules after this one could see."""
    return demo_gateway


def test_schemathesis_with_every_check_passes_against_the_live_gateway(gateway, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(models=f'["{MODEL}", "{PYFUNC}"]', protocols=PROTOCOLS.format()))
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         f"{gateway['base']}/openapi.json", "--checks", "all", "--workers", "1",
         "--max-examples", str(EXAMPLES_PER_OPERATION), "--request-timeout", "30", "--seed", "13",
         "--header", f"Authorization: Bearer {ADMIN_TOKEN}", "--no-color", "--output-truncate", "true"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = run.stdout + run.stderr
    print(*out.splitlines()[-12:], sep="\n")  # the summary, with the run's own duration (pytest -s)
    assert run.returncode == 0, out[-8000:]
    assert re.search(rf"Tested:\s+{OPERATIONS}\b", out), out[-3000:]  # every operation of the document
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", out).groups())
    assert generated == passed > 9 * 10, out[-3000:]
