"""Credentials (issue 13, "secure by default"): API keys and their key file, and JWT bearer
tokens (a static key, or a JWKS served by a real local HTTP server). What each scope lets a
caller do through the HTTP app: test_auth_http.py.

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

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from serving import cli
from serving.auth.keys import KeyStore, key_hash, new_key, read_keys, write_keys
from serving.auth.settings import ApiKey, JwtSettings
from serving.auth.tokens import JwtVerifier
from serving.errors import AuthUnavailable, Unauthorized
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
