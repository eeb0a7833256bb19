"""``mlgate rollout``: watch and steer a rollout on a running gateway.

``status`` and ``set`` talk to the gateway's admin API (every replica follows within
``rollout.refresh_s``); ``approve`` and ``promote`` talk to the MLflow registry (every replica's
watcher swaps the new champion in within ``registry.poll_s``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx

from serving.settings import Settings


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", choices=("status", "set", "approve", "promote"))
    sp.add_argument("--model", default=None, help="model name (default: the only model the gateway serves)")
    sp.add_argument("--url", default=None, help="gateway base URL (default: this host's gateway, on "
                                                "admin.port when set, else http.port)")
    sp.add_argument("--canary-weight", type=float, help="set: percent of routing keys for the canary")
    sp.add_argument("--shadow", action="append", default=[], metavar="NAME=SHARE",
                    help="set: percent of requests mirrored to a shadow (repeatable)")
    sp.add_argument("--version", help="approve/promote: registered version (promote default: the "
                                      "version the canary serves now)")
    sp.add_argument("--by", help="approve: who approves (recorded in tag mlgate.approved_by; the "
                                 "artifacts' digest goes to mlgate.artifact_sha256)")
    sp.add_argument("--force", action="store_true", help="promote: even a version that was rolled back")


def run(args: argparse.Namespace, settings: Settings) -> int:
    admin = Admin(args.url or admin_url(settings), settings)
    try:
        model = args.model or _only_model(admin)
        if args.action == "status":
            show(admin.get(model))
        elif args.action == "set":
            change: dict[str, Any] = {}
            if args.canary_weight is not None:
                change["canary_weight"] = args.canary_weight
            if args.shadow:
                change["shadow_shares"] = dict(_share(s) for s in args.shadow)
            if not change:
                return _fail("set: give --canary-weight and/or --shadow NAME=SHARE")
            show(admin.patch(model, change))
        elif args.action == "approve":
            if not (args.version and args.by):
                return _fail("approve: give --version and --by")
            digest = registry(settings).approve(model, args.version, args.by)
            print(f"{model} v{args.version} approved by {args.by} (artifacts sha256 {digest[:12]}...)")
        else:
            return promote(args, settings, admin, model)
    except GatewayError as exc:
        return _fail(str(exc))
    return 0


def _only_model(admin: Admin) -> str:
    names = [r["model"] for r in admin.list()]
    if len(names) != 1:
        raise GatewayError(f"the gateway serves {len(names)} models ({', '.join(names) or 'none'}): "
                           "say which with --model")
    return names[0]


def promote(args: argparse.Namespace, settings: Settings, admin: Admin, model: str) -> int:
    from serving.errors import MlgateError

    version = args.version or admin.get(model)["variants"].get("canary", {}).get("version")
    if not version:
        return _fail("promote: the gateway has no canary serving; give --version")
    try:
        registry(settings).promote(model, str(version), force=args.force)
    except MlgateError as exc:
        return _fail(exc.message)
    print(f"{model}: champion -> v{version}; gateways swap it in within {settings.registry.poll_s:g}s")
    try:
        show(admin.patch(model, {"canary_weight": 0}))
    except GatewayError as exc:
        print(f"(could not reset the canary weight on the gateway: {exc})", file=sys.stderr)
    return 0


def admin_url(settings: Settings) -> str:
    """Where this host's gateway serves the admin API."""
    host = settings.admin.host or settings.http.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    scheme = "https" if settings.http.tls_certfile else "http"
    return f"{scheme}://{host}:{settings.admin.port or settings.http.port}"


class GatewayError(Exception):
    pass


class Admin:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url.rstrip("/")
        token = settings.admin.token
        self.headers = {"authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    def get(self, model: str) -> dict[str, Any]:
        return self._call("GET", f"/{model}")

    def list(self) -> list[dict[str, Any]]:
        return self._call("GET", "")["rollouts"]

    def patch(self, model: str, change: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"/{model}", change)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = httpx.request(method, f"{self.url}/v1/admin/rollouts{path}", json=body,
                              headers=self.headers, timeout=10)
        except httpx.HTTPError as exc:
            raise GatewayError(f"gateway at {self.url} unreachable: {type(exc).__name__}") from None
        if r.status_code != 200:
            try:
                error = r.json()["error"]
                raise GatewayError(f"{r.status_code} {error['code']}: {error['message']}")
            except (ValueError, KeyError):
                raise GatewayError(f"{r.status_code} from {self.url}") from None
        return r.json()


def registry(settings: Settings):
    from serving.registry import Registry

    return Registry(settings.tracking_uri)


def show(state: dict[str, Any]) -> None:
    halted = f"  HALTED: {state['reason']}" if state["halted"] else ""
    print(f"{state['model']}: canary {state['canary_weight']:g}%  shadows {state['shadow_shares'] or '-'}"
          f"  (changed by {state['updated_by']}){halted}")
    for name, v in state["variants"].items():
        ref = f"@{v['alias']}" if v["alias"] else f"/{v['pinned_version']}"
        status = f"v{v['version']}" if v["ready"] else f"not serving ({v['error'] or 'loading'})"
        print(f"  {name:<10} {ref:<14} {status}")
    for name, a in state["analysis"].items():
        print(f"  window {name:<8} {a['requests']:>6} requests  errors {a['error_rate']:.1%}  p99 {a['p99_ms']:.1f} ms")


def _share(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise SystemExit(f"--shadow expects NAME=SHARE, got {text!r}") from None


def _fail(message: str) -> int:
    print(f"mlgate rollout: {message}", file=sys.stderr)
    return 1
