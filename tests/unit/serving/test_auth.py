"""Authentication and authorisation (issue 13, "secure by default"): API keys and their key file,
JWT bearer tokens (a static key, or a JWKS served by a real local HTTP server), what each scope
lets a caller do through the HTTP app, and the refusal to expose a gateway without credentials.

No Ray, no Redis: quotas are tested against a real redis-server in tests/integration/test_quota.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from observability.metrics import GatewayMetrics
from serving import cli, routing
from serving.auth.authenticator import InsecureExposure, check_exposure
from serving.auth.keys import KeyStore, key_hash, new_key, read_keys, write_keys
from serving.auth.settings import ApiKey, AuthSettings, JwtSettings
from serving.auth.tokens import JwtVerifier
from serving.errors import AuthUnavailable, Unauthorized
from serving.http.app import build_app
from serving.http.server import ReplicaServer
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.rollout import Rollouts
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime, make_spec
from tests.unit.serving.test_replica_server import free_port

ROW = {"amount": 250.0, "count": 3, "is_online": True, "score": 0.5}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """Each test sees only its own settings, whatever MLGATE_* the shell exported."""
    for name in list(os.environ):
        if name.startswith("MLGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLGATE_STATE_DIR", str(tmp_path / "state"))


def entry(key_id: str, key: str, *scopes: str, **extra) -> ApiKey:
    return ApiKey(id=key_id, sha256=key_hash(key), scopes=scopes, **extra)


# -- API keys and the key file --------------------------------------------------------------------

def test_a_new_key_is_found_by_lookup_with_its_scopes_and_quota_and_others_are_not(tmp_path):
    key, other = new_key(), new_key()
    assert key.startswith("mlg_") and len(key) == 4 + 43 and key != other
    store = KeyStore((entry("billing", key, "predict:toy", "route", quota={"rate_per_s": 5, "burst": 2}),),
                     None)
    principal = store.lookup(key)
    assert (principal.id, principal.kind) == ("key:billing", "key")
    assert principal.scopes == {"predict:toy", "route"} and principal.trusted and not principal.admin
    assert (principal.quota.rate_per_s, principal.quota.capacity) == (5, 2)
    for garbled in (other, key[:-1], key + "x", key.upper(), "", "mlg_", key.removeprefix("mlg_")):
        assert store.lookup(garbled) is None, garbled


def test_the_key_file_is_re_read_when_it_changes_and_a_revoked_key_stops_working(tmp_path):
    path = tmp_path / "keys.yaml"
    first, second = new_key(), new_key()
    write_keys(path, [entry("first", first, "predict:*")])
    store = KeyStore((), path, reload_s=0.05)
    assert store.lookup(first).id == "key:first" and store.lookup(second) is None

    write_keys(path, [entry("first", first, "predict:*"), entry("second", second, "metrics")])
    time.sleep(0.06)
    assert store.lookup(second).scopes == {"metrics"}  # added: works without a restart

    write_keys(path, [entry("second", second, "metrics")])
    revoked_at = time.monotonic()
    while store.lookup(first) is not None:
        assert time.monotonic() - revoked_at < 0.5, "the revoked key kept working"
        time.sleep(0.01)
    assert time.monotonic() - revoked_at <= 0.05 + 0.2  # within reload_s (plus scheduling)
    assert store.lookup(second) is not None


def test_a_key_file_replaced_by_one_of_the_same_size_and_modification_time_is_still_re_read(tmp_path):
    """A key rotated in place (same id and scopes, so the same size) by a tool that keeps
    modification times (cp -p, rsync -t), or within the file system's timestamp granularity."""
    path = tmp_path / "keys.yaml"
    old, new = new_key(), new_key()
    write_keys(path, [entry("svc", old, "predict:*")])
    before = os.stat(path)
    store = KeyStore((), path, reload_s=0.01)
    write_keys(path, [entry("svc", new, "predict:*")])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    time.sleep(0.02)
    assert store.lookup(new) is not None and store.lookup(old) is None


def test_an_invalid_key_file_keeps_the_previous_keys_and_one_invalid_at_start_fails(tmp_path, caplog):
    path = tmp_path / "keys.yaml"
    key = new_key()
    write_keys(path, [entry("svc", key, "predict:*")])
    store = KeyStore((), path, reload_s=0.01)
    for broken in ("keys: [", "keys: [{id: svc, sha256: nothex, scopes: [predict:*]}]", "- a list\n",
                   json.dumps({"keys": [{"id": "x", "sha256": "0" * 64, "scopes": ["sudo"]}]})):
        path.write_text(broken)
        time.sleep(0.02)
        with caplog.at_level("ERROR", logger="serving.auth.keys"):
            assert store.lookup(key) is not None, broken
    assert "stay in force" in caplog.text
    path.unlink()  # a Secret unmounted: still the keys read last
    time.sleep(0.02)
    assert store.lookup(key) is not None
    fixed = new_key()
    write_keys(path, [entry("fixed", fixed, "predict:*")])
    time.sleep(0.02)
    assert store.lookup(fixed) is not None and store.lookup(key) is None

    path.write_text("keys: [")
    with pytest.raises(ValueError, match="cannot read the API key file"):
        KeyStore((), path)
    write_keys(path, [entry("twice", new_key(), "metrics"), entry("twice", new_key(), "metrics")])
    with pytest.raises(ValueError, match="names a key id twice"):
        KeyStore((), path)
    with pytest.raises(ValueError):
        KeyStore((), tmp_path / "missing.yaml")


def test_write_keys_makes_a_file_only_its_owner_can_read(tmp_path):
    path = tmp_path / "secrets" / "keys.yaml"
    write_keys(path, [entry("svc", new_key(), "predict:*")])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [k.id for k in read_keys(path)] == ["svc"]
    assert [p.name for p in path.parent.iterdir()] == ["keys.yaml"]  # no partial file left


def test_keys_create_list_revoke_through_the_command_line(tmp_path, capsys):
    path = tmp_path / "keys.yaml"
    assert cli.main(["keys", "--file", str(path), "create", "--id", "billing", "--scope", "predict:toy",
                     "--scope", "route", "--rate", "5", "--burst", "10"]) == 0
    out, err = capsys.readouterr()
    (key,) = out.split()  # the key, once, alone on stdout
    assert key.startswith("mlg_") and "billing" in err and key not in err
    text = path.read_text()
    assert key not in text and key_hash(key) in text
    (stored,) = read_keys(path)
    assert (stored.id, stored.scopes, stored.quota.rate_per_s, stored.quota.capacity) == \
        ("billing", ("predict:toy", "route"), 5, 10)
    assert KeyStore((), path).lookup(key).id == "key:billing"

    assert cli.main(["keys", "--file", str(path), "create", "--id", "billing", "--scope", "metrics"]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["keys", "--file", str(path), "create", "--id", "ops", "--scope", "sudo"]) == 2
    assert "unknown scope" in capsys.readouterr().err
    assert [k.id for k in read_keys(path)] == ["billing"]  # neither refusal wrote anything

    assert cli.main(["keys", "--file", str(path), "create", "--id", "prom", "--scope", "metrics"]) == 0
    prom = capsys.readouterr().out.strip()
    assert cli.main(["keys", "--file", str(path), "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["billing  predict:toy route  5/s burst 10", "prom  metrics"]
    assert key not in out and prom not in out

    assert cli.main(["keys", "--file", str(path), "revoke", "--id", "billing"]) == 0
    store = KeyStore((), path)
    assert store.lookup(key) is None and store.lookup(prom).id == "key:prom"
    assert cli.main(["keys", "--file", str(path), "revoke", "--id", "billing"]) == 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# -- JWT bearer tokens ----------------------------------------------------------------------------

SECRET = "a-shared-secret-of-at-least-32-bytes!"
ISSUER, AUDIENCE = "https://idp.example", "mlgate"


def claims(**overrides) -> dict:
    now = int(time.time())
    return {"sub": "svc-a", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300,
            "scope": "predict:toy metrics openid", **overrides}


def hs256(payload: dict, secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def forged(header: dict, payload: dict, secret: bytes) -> str:
    """A token signed with HMAC-SHA256 whatever its header says (PyJWT refuses to make some)."""
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def hs_verifier(**settings) -> JwtVerifier:
    return JwtVerifier(JwtSettings(key=SecretStr(SECRET), algorithms=("HS256",), issuer=ISSUER,
                                   audience=AUDIENCE, **settings))


def refused(verifier: JwtVerifier, token: str) -> Exception:
    async def main():
        with pytest.raises((Unauthorized, AuthUnavailable)) as caught:
            await verifier.verify(token)
        return caught.value

    return asyncio.run(main())


def test_a_valid_hs256_token_names_its_subject_and_scopes():
    principal = asyncio.run(hs_verifier().verify(hs256(claims())))
    assert (principal.id, principal.kind) == ("jwt:svc-a", "jwt")
    assert principal.scopes == {"predict:toy", "metrics"}  # openid is no mlgate scope
    assert principal.may_predict("toy") and not principal.may_predict("other") and not principal.trusted

    mapped = hs_verifier(scopes_claim="groups", scope_map={"risk-team": ("predict:toy", "route")})
    token = hs256(claims(sub="alice", groups=["risk-team", "metrics", "admin", "payroll"], scope="admin"))
    principal = asyncio.run(mapped.verify(token))
    assert principal.id == "jwt:alice"
    # with a map only mapped groups count: a provider group named "admin" or "metrics" grants
    # nothing, and "scope" is not the claim here
    assert principal.scopes == {"predict:toy", "route"}
    assert principal.trusted and not principal.admin


@pytest.mark.parametrize("case", ["expired", "bad_signature", "wrong_audience", "wrong_issuer", "no_exp",
                                  "no_subject", "alg_none", "alg_list", "not_a_jwt", "not_yet_valid"])
def test_tokens_that_prove_nothing_are_401(case):
    now = int(time.time())
    token = {
        "expired": lambda: hs256(claims(exp=now - 120)),  # beyond the 30 s leeway
        "bad_signature": lambda: hs256(claims(), secret="another-secret-of-at-least-32-bytes"),
        "wrong_audience": lambda: hs256(claims(aud="someone-else")),
        "wrong_issuer": lambda: hs256(claims(iss="https://evil.example")),
        "no_exp": lambda: hs256({k: v for k, v in claims().items() if k != "exp"}),
        "no_subject": lambda: hs256({k: v for k, v in claims().items() if k != "sub"}),
        "alg_none": lambda: jwt.encode(claims(), None, algorithm="none"),
        "alg_list": lambda: forged({"alg": ["HS256"], "typ": "JWT"}, claims(), SECRET.encode()),
        "not_a_jwt": lambda: "eyJ.not.a-token",
        "not_yet_valid": lambda: hs256(claims(nbf=now + 600)),
    }[case]()
    error = refused(hs_verifier(), token)
    assert error.status == 401
    assert error.code == ("credentials_expired" if case == "expired" else "unauthorized")


def rsa_key():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, pem


def test_an_hs256_token_signed_with_the_public_key_is_refused_when_only_rs256_is_accepted():
    """The RS/HS confusion: an attacker signs HS256 with the provider's public key as the secret."""
    private, pem = rsa_key()
    verifier = JwtVerifier(JwtSettings(key=SecretStr(pem.decode()), algorithms=("RS256",)))
    good = jwt.encode(claims(), private, algorithm="RS256")
    assert asyncio.run(verifier.verify(good)).id == "jwt:svc-a"
    error = refused(verifier, forged({"alg": "HS256", "typ": "JWT"}, claims(), pem))
    assert (error.status, error.code) == (401, "unauthorized")
    with pytest.raises(ValueError, match="not a key for HS256"):  # nor can it be configured to
        JwtVerifier(JwtSettings(key=SecretStr(pem.decode()), algorithms=("RS256", "HS256")))
    with pytest.raises(ValueError, match="unsigned"):
        JwtSettings(key=SecretStr(SECRET), algorithms=("HS256", "none"))


def test_a_cached_token_is_refused_once_past_its_expiry(monkeypatch):
    import serving.auth.tokens as tokens

    verifier = hs_verifier(leeway_s=0)
    token = hs256(claims(exp=int(time.time()) + 60))
    assert asyncio.run(verifier.verify(token)).id == "jwt:svc-a"
    assert token in verifier._cache  # the next call is answered from the cache
    later = time.time() + 61

    class Clock:  # the verifier's clock only: PyJWT would still accept the token
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def time():
            return later

    monkeypatch.setattr(tokens, "time", Clock)
    error = refused(verifier, token)
    assert (error.status, error.code) == (401, "credentials_expired")


class JwksServer:
    """A JWKS document on a real local HTTP server (in a thread), counting its fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.hits = 0
        self.down = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                if server.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps(server.document()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def document(self) -> dict:
        keys = []
        for kid, private in list(self.keys.items()):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": keys}

    def token(self, kid: str, private=None, **overrides) -> str:
        return jwt.encode(claims(**overrides), private or self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks():
    server = JwksServer()
    server.add("k1")
    yield server
    server.close()


def jwks_verifier(url: str, min_refresh_s: float, refresh_s: float = 300.0) -> JwtVerifier:
    return JwtVerifier(JwtSettings(jwks_url=url, algorithms=("RS256",), issuer=ISSUER, audience=AUDIENCE,
                                   jwks_min_refresh_s=min_refresh_s, jwks_refresh_s=refresh_s))


def test_rs256_tokens_are_checked_against_the_providers_jwks(jwks):
    async def main():
        verifier = jwks_verifier(jwks.url, 60)
        await verifier.start()
        assert jwks.hits == 1
        assert (await verifier.verify(jwks.token("k1", sub="bob"))).id == "jwt:bob"
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with pytest.raises(Unauthorized):  # the provider's kid, somebody else's key
            await verifier.verify(jwks.token("k1", private=stranger))
        assert jwks.hits == 1  # a known kid never refetches

    asyncio.run(main())


def test_unknown_kids_refetch_the_jwks_at_most_once_per_min_refresh(jwks):
    min_refresh_s = 0.25

    async def main():
        verifier = jwks_verifier(jwks.url, min_refresh_s)
        await verifier.start()
        started, sent = time.monotonic(), 0
        while time.monotonic() - started < 1.0:  # a flood of tokens naming keys nobody has
            tokens = [jwks.token(f"unknown-{sent + i}", private=jwks.keys["k1"]) for i in range(25)]
            results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
            assert all(isinstance(r, Unauthorized) and r.code == "unauthorized" for r in results)
            sent += len(tokens)
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        return sent, elapsed

    sent, elapsed = asyncio.run(main())
    refetches = jwks.hits - 1
    assert sent >= 100
    assert 2 <= refetches <= elapsed / min_refresh_s + 1, (refetches, elapsed)


def test_a_key_the_provider_retires_stops_verifying_tokens_even_ones_seen_before(jwks):
    async def main():
        verifier = jwks_verifier(jwks.url, 0.1, refresh_s=0.3)
        jwks.add("k2")
        seen = jwks.token("k1", sub="erin")
        assert (await verifier.verify(seen)).id == "jwt:erin"  # checked once, then remembered
        del jwks.keys["k1"]  # retired (or leaked) at the provider
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the periodic refresh runs in the background
            await asyncio.sleep(0.1)
            try:
                await verifier.verify(seen)
            except Unauthorized:
                break
        else:
            pytest.fail("a token of a retired key still verifies")
        assert (await verifier.verify(jwks.token("k2", sub="frank"))).id == "jwt:frank"

    asyncio.run(main())


def test_a_rotated_key_is_picked_up_and_a_provider_down_is_503_not_401(jwks):
    async def main():
        verifier = jwks_verifier(jwks.url, 0.2)
        await verifier.start()
        jwks.add("k2")  # the provider rotates: a new key, tokens signed with it soon after
        await asyncio.sleep(0.25)
        assert (await verifier.verify(jwks.token("k2", sub="carol"))).id == "jwt:carol"
        assert jwks.hits == 2
        assert (await verifier.verify(jwks.token("k1", sub="dave"))).id == "jwt:dave"  # the old one too

    asyncio.run(main())

    async def provider_down():
        verifier = jwks_verifier(jwks.url, 0.2)
        jwks.down = True
        with pytest.raises(AuthUnavailable) as caught:  # the first token after a start without keys
            await verifier.verify(jwks.token("k1"))
        assert (caught.value.status, caught.value.code, caught.value.retryable) == (503, "auth_unavailable", True)
        jwks.down = False
        await asyncio.sleep(0.25)
        assert (await verifier.verify(jwks.token("k1"))).id == "jwt:svc-a"  # back: no restart needed

    asyncio.run(provider_down())

    async def nobody_listening():
        verifier = jwks_verifier(f"http://127.0.0.1:{free_port()}/jwks.json", 30)
        await verifier.start()  # down at start: not fatal, retried on the first token
        with pytest.raises(AuthUnavailable):
            await verifier.verify(jwks.token("k1"))

    asyncio.run(nobody_listening())


# -- the HTTP app: who may do what ----------------------------------------------------------------

CANARY_ROUTING = {"canary": {"alias": "challenger", "weight": 50}}


def keyring(**scopes_by_id: tuple[str, ...]) -> tuple[list[dict], dict[str, str]]:
    """Inline API key settings (hashes only) and the keys themselves, by id."""
    keys = {key_id: new_key() for key_id in scopes_by_id}
    return ([{"id": key_id, "sha256": key_hash(keys[key_id]), "scopes": list(scopes)}
             for key_id, scopes in scopes_by_id.items()], keys)


def gateway(scenario, auth=None, client_host="127.0.0.1", models=("toy",), routing=None, **settings):
    """Run ``scenario(client, pipeline, metrics)`` against a freshly built app: each model's
    champion is v3 and its challenger (a canary, when ``routing`` names one) v4."""
    settings = Settings(models=[{"name": n, **({"routing": routing} if routing else {})} for n in models],
                        auth=auth or {}, **settings)
    metrics = GatewayMetrics()

    def runtime(m):
        return InProcessModel(ToyRuntime(make_spec(m.name, version="4" if m.alias == "challenger" else "3")),
                              metrics)

    async def main():
        table = ModelTable(settings, metrics, runtime, retry_initial_s=0.01)
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        for _ in range(200):  # the canaries load too
            if all(v.backend for n in models for v in table.variants(n).values()):
                break
            await asyncio.sleep(0.01)
        pipeline = Pipeline(settings, table, metrics, rollouts=Rollouts(settings, table, metrics))
        transport = httpx.ASGITransport(app=build_app(pipeline), raise_app_exceptions=False,
                                        client=(client_host, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            try:
                return await scenario(client, pipeline, metrics)
            finally:
                table.close()

    return asyncio.run(main())


def predict(client, headers=None, model="toy", body=None):
    return client.post(f"/v1/models/{model}/predict", content=orjson.dumps(body or {"instances": [ROW]}),
                       headers={"content-type": "application/json", **(headers or {})})


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def sample(metrics, name, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_predict_needs_a_credential_in_either_header_and_a_scope_for_the_model():
    entries, keys = keyring(caller=("predict:toy",), elsewhere=("predict:other",))

    async def scenario(client, pipeline, metrics):
        r = await predict(client)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        assert r.headers["www-authenticate"] == 'Bearer realm="mlgate"'
        for headers in (bearer(keys["caller"]), {"x-api-key": keys["caller"]},
                        {"authorization": f"bearer   {keys['caller']}  "}):
            r = await predict(client, headers)
            assert r.status_code == 200, (headers, r.text)
            assert [p["label"] for p in r.json()["predictions"]] == [1]
        refusals = [
            ({"authorization": f"Basic {keys['caller']}"}, 401, "unauthorized"),
            ({"authorization": keys["caller"]}, 401, "unauthorized"),  # no scheme
            (bearer(new_key()), 401, "unauthorized"),  # well formed, never issued
            (bearer("not-a-key"), 401, "unauthorized"),
            ({"x-api-key": ""}, 401, "unauthorized"),
            (bearer(keys["elsewhere"]), 403, "forbidden"),
        ]
        for headers, status, code in refusals:
            r = await predict(client, headers)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), headers
            assert keys["caller"] not in r.text and keys["elsewhere"] not in r.text
        assert sample(metrics, "mlgate_requests_total", model="toy", version="", outcome="unauthorized") == 6
        assert sample(metrics, "mlgate_requests_total", model="toy", version="", outcome="forbidden") == 1
        assert sample(metrics, "mlgate_requests_total", model="toy", version="3", outcome="ok") == 3

    gateway(scenario, auth={"api_keys": entries})


def test_only_route_and_admin_callers_learn_which_variant_and_version_answered():
    entries, keys = keyring(caller=("predict:toy",), router=("predict:toy", "route"), admin=("admin",))

    async def scenario(client, pipeline, metrics):
        r = await predict(client, bearer(keys["caller"]))
        assert r.status_code == 200
        body = r.json()
        assert not {"version", "variant", "alias"} & set(body)
        assert body["model"] == "toy" and body["request_id"]
        assert [set(p) & {"model_version"} for p in body["predictions"]] == [set()]
        assert "x-model-version" not in r.headers and "x-mlgate-variant" not in r.headers
        for who in ("router", "admin"):
            r = await predict(client, bearer(keys[who]))
            body = r.json()
            assert (body["version"], body["variant"], body["alias"]) == ("3", "champion", "champion")
            assert body["predictions"][0]["model_version"] == "3"
            assert (r.headers["x-model-version"], r.headers["x-mlgate-variant"]) == ("3", "champion")

    gateway(scenario, auth={"api_keys": entries})


def test_the_routing_key_header_steers_only_trusted_callers():
    """At a 50 % canary, a trusted caller's one routing key always lands on the same variant; an
    untrusted caller's instance requests are drawn at random whatever key it sends, so it cannot
    pin (or, with a chosen key, steer) its traffic."""
    entries, keys = keyring(caller=("predict:toy",), router=("predict:toy", "route"))
    key = "customer-7"
    sticky = routing.assign("toy", key, 50)

    async def scenario(client, pipeline, metrics):
        def served(variant):
            return sample(metrics, "mlgate_variant_requests_total", model="toy", variant=variant, outcome="ok")

        for _ in range(40):
            assert (await predict(client, {**bearer(keys["router"]), "x-routing-key": key})).status_code == 200
        assert (served(sticky), served("canary" if sticky == "champion" else "champion")) == (40, 0)
        for _ in range(40):
            assert (await predict(client, {**bearer(keys["caller"]), "x-routing-key": key})).status_code == 200
        # P(40 random draws at 50 % all on the sticky side) = 2**-40
        assert served("champion") + served("canary") == 80
        assert 0 < served("canary" if sticky == "champion" else "champion") < 40

    gateway(scenario, auth={"api_keys": entries}, routing=CANARY_ROUTING)


def test_a_forced_variant_needs_the_admin_scope():
    entries, keys = keyring(router=("predict:*", "route"), admin=("admin",))

    async def scenario(client, pipeline, metrics):
        r = await predict(client, {**bearer(keys["router"]), "x-mlgate-variant": "canary"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await predict(client, {**bearer(keys["admin"]), "x-mlgate-variant": "canary"})
        assert (r.status_code, r.json()["variant"], r.json()["version"]) == (200, "canary", "4")

    gateway(scenario, auth={"api_keys": entries}, routing=CANARY_ROUTING)


def test_metrics_models_list_health_and_admin_api_by_scope(caplog):
    entries, keys = keyring(caller=("predict:toy",), every=("predict:*",), prom=("metrics",), admin=("admin",))

    async def scenario(client, pipeline, metrics):
        r = await client.get("/metrics")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        assert r.headers["www-authenticate"] == 'Bearer realm="mlgate"'
        r = await client.get("/metrics", headers=bearer(keys["every"]))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        for who in ("prom", "admin"):
            r = await client.get("/metrics", headers=bearer(keys[who]))
            assert r.status_code == 200 and "mlgate_requests_total" in r.text

        def listed(r):
            return [m["name"] for m in r.json()["models"]]

        assert (await client.get("/v1/models")).status_code == 401
        assert listed(await client.get("/v1/models", headers=bearer(keys["caller"]))) == ["toy"]
        assert listed(await client.get("/v1/models", headers=bearer(keys["every"]))) == ["toy", "other"]
        assert listed(await client.get("/v1/models", headers=bearer(keys["prom"]))) == []
        assert (await client.get("/v1/models/toy", headers=bearer(keys["caller"]))).status_code == 200
        assert (await client.get("/v1/models/other", headers=bearer(keys["caller"]))).status_code == 403
        assert (await client.get("/v1/models/toy")).status_code == 401

        for path in ("/healthz", "/readyz"):  # probes carry no credentials
            assert (await client.get(path)).status_code == 200

        r = await client.get("/v1/admin/rollouts")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        r = await client.get("/v1/admin/rollouts", headers=bearer(keys["every"]))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 100}, headers=bearer(keys["every"]))
        assert r.status_code == 403 and pipeline.rollouts.canary_weight("toy") == 50
        r = await client.get("/v1/admin/rollouts", headers=bearer(keys["admin"]))
        assert r.status_code == 200 and [m["model"] for m in r.json()["rollouts"]] == ["toy", "other"]
        with caplog.at_level("INFO", logger="mlgate.audit"):
            r = await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 100},
                                   headers=bearer(keys["admin"]))
        assert (r.status_code, r.json()["updated_by"]) == (200, "admin")
        assert pipeline.rollouts.canary_weight("toy") == 100
        (record,) = [json.loads(m.getMessage()) for m in caplog.records if m.name == "mlgate.audit"]
        assert record["who"] == "key:admin"  # the audit log names the key, never the key itself
        assert keys["admin"] not in caplog.text

    # from loopback, as the demo's admin calls are: with credentials configured that earns nothing
    gateway(scenario, auth={"api_keys": entries}, models=("toy", "other"), routing=CANARY_ROUTING)


def test_a_bearer_jwt_works_through_the_app_with_its_scopes():
    auth = {"jwt": {"key": SECRET, "algorithms": ["HS256"], "issuer": ISSUER, "audience": AUDIENCE}}

    async def scenario(client, pipeline, metrics):
        r = await predict(client, bearer(hs256(claims(scope="predict:toy"))))
        assert r.status_code == 200 and "version" not in r.json()
        r = await predict(client, bearer(hs256(claims(scope="predict:other"))))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await predict(client, bearer(hs256(claims(exp=int(time.time()) - 120))))
        assert (r.status_code, r.json()["error"]["code"]) == (401, "credentials_expired")
        assert r.headers["www-authenticate"] == 'Bearer realm="mlgate"'
        r = await predict(client, bearer(forged({"alg": ["HS256"]}, claims(), SECRET.encode())))
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")

    gateway(scenario, auth=auth)


def test_a_key_revoked_in_the_key_file_stops_working_without_a_restart(tmp_path, capsys):
    path = tmp_path / "keys.yaml"
    assert cli.main(["keys", "--file", str(path), "create", "--id", "svc", "--scope", "predict:toy"]) == 0
    key = capsys.readouterr().out.strip()

    async def scenario(client, pipeline, metrics):
        assert (await predict(client, bearer(key))).status_code == 200
        assert cli.main(["keys", "--file", str(path), "revoke", "--id", "svc"]) == 0
        await asyncio.sleep(0.06)
        r = await predict(client, bearer(key))
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")

    gateway(scenario, auth={"api_keys_file": str(path), "reload_s": 0.05})


def test_without_credentials_configured_a_loopback_gateway_behaves_as_before():
    async def scenario(client, pipeline, metrics):
        r = await predict(client, {"x-routing-key": "customer-7"})
        assert r.status_code == 200
        assert (r.json()["version"], r.headers["x-model-version"], r.headers["x-mlgate-variant"]) == \
            ("3", "3", "champion")
        assert (await client.get("/metrics")).status_code == 200
        assert [m["name"] for m in (await client.get("/v1/models")).json()["models"]] == ["toy"]
        assert (await client.get("/v1/admin/rollouts")).status_code == 200  # the demo's loopback trust

    gateway(scenario)

    async def insecure(client, pipeline, metrics):  # anyone may predict, nobody may steer or see
        r = await predict(client)
        assert r.status_code == 200 and "version" not in r.json() and "x-mlgate-variant" not in r.headers
        assert (await client.get("/v1/admin/rollouts")).status_code == 403

    gateway(insecure, auth={"insecure": True}, client_host="10.1.2.3", http={"host": "0.0.0.0"})


def test_a_request_without_credentials_is_refused_before_its_body_arrives():
    """Admission comes first: a caller that declares a body and never sends it gets its 401 at
    once, holding neither a body buffer nor an in-flight slot until body_timeout_s."""
    entries, _ = keyring(svc=("predict:*",))
    settings = Settings(models=[{"name": "toy"}], auth={"api_keys": entries}, http={"body_timeout_s": 5})
    metrics = GatewayMetrics()

    async def main():
        table = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(), metrics))
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        port = free_port()
        server = ReplicaServer(build_app(Pipeline(settings, table, metrics)), "127.0.0.1", port, drain_s=0.2)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            started = time.monotonic()
            writer.write(b"POST /v1/models/toy/predict HTTP/1.1\r\nhost: x\r\n"
                         b"content-type: application/json\r\ncontent-length: 100\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            body = await asyncio.wait_for(reader.readexactly(length), 1)
            return head, body, time.monotonic() - started
        finally:
            writer.close()
            await server.stop()
            table.close()

    head, body, elapsed = asyncio.run(main())
    assert head.startswith(b"HTTP/1.1 401 ") and b'"unauthorized"' in body
    assert elapsed < 1.0  # body_timeout_s is 5


def test_quotas_are_on_when_any_limit_may_apply_a_keys_own_included(tmp_path):
    """An API key made with ``mlgate keys create --rate`` is limited even when no default limit
    is configured (the gateway builds its Limiter when this says so)."""
    key = new_key()
    assert not AuthSettings().quotas_enabled
    assert not AuthSettings(api_keys=[entry("svc", key, "predict:*")]).quotas_enabled
    assert AuthSettings(api_keys=[entry("svc", key, "predict:*", quota={"rate_per_s": 5})]).quotas_enabled
    assert AuthSettings(api_keys_file=tmp_path / "keys.yaml").quotas_enabled  # may gain one at a reload
    assert AuthSettings(quotas={"per_key": {"rate_per_s": 5}}).quotas_enabled
    assert AuthSettings(quotas={"per_model": {"toy": {"rate_per_s": 5}}}).quotas_enabled


# -- exposure: no credentials beyond this machine unless told -------------------------------------

def test_check_exposure_refuses_a_public_gateway_without_credentials():
    entries, _ = keyring(svc=("predict:*",))
    for host in ("0.0.0.0", "::", "10.0.0.5", "gateway.internal"):
        with pytest.raises(InsecureExposure, match="--insecure"):
            check_exposure(host, AuthSettings())
        check_exposure(host, AuthSettings(api_keys=entries))
        check_exposure(host, AuthSettings(jwt={"key": SECRET, "algorithms": ["HS256"]}))
        check_exposure(host, AuthSettings(insecure=True))
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, AuthSettings())


def test_serve_on_a_public_address_without_credentials_exits_2_before_starting_ray(monkeypatch, capsys):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a gateway that must refuse to start")

    monkeypatch.setattr(ray, "init", no_ray)
    assert cli.main(["serve", "--host", "0.0.0.0"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlgate: error: refusing to serve on 0.0.0.0 without authentication")
    assert "--insecure" in err and len(err.splitlines()) == 1
