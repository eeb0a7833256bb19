"""``mlgate keys``: make, list and revoke API keys in a key file (``auth.api_keys_file``).

The key is printed once, on stdout, and never stored: the file keeps its SHA-256. Gateways
re-read the file when it changes (``auth.reload_s``), so a new key works and a revoked one stops
working without a restart (through a Kubernetes Secret: once the kubelet updates the mount).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from serving.auth.keys import key_hash, new_key, read_keys, write_keys
from serving.auth.settings import ApiKey
from serving.errors import UsageError
from serving.settings import Settings


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--file", type=Path, help="key file (default: auth.api_keys_file)")
    actions = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key, print it once, store its hash")
    create.add_argument("--id", required=True, help="who holds the key (a service or team name)")
    create.add_argument("--scope", action="append", required=True, dest="scopes",
                        help="predict:<model>, predict:*, route, metrics or admin (repeat for several)")
    create.add_argument("--rate", type=float, help="this key's request-rate limit, per second")
    create.add_argument("--burst", type=int, help="requests at once after a quiet spell (with --rate)")
    actions.add_parser("list", help="key ids and scopes (never the keys)")
    revoke = actions.add_parser("revoke", help="remove a key")
    revoke.add_argument("--id", required=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    path = args.file or settings.auth.api_keys_file
    if path is None:
        raise UsageError("name the key file: --file PATH or MLGATE_AUTH__API_KEYS_FILE")
    keys = _read(path) if path.exists() or args.action != "create" else []
    if args.action == "list":
        for key in keys:
            limit = f"  {key.quota.rate_per_s:g}/s burst {key.quota.capacity}" if key.quota else ""
            print(f"{key.id}  {' '.join(key.scopes)}{limit}")
        return 0
    if args.action == "revoke":
        kept = [k for k in keys if k.id != args.id]
        if len(kept) == len(keys):
            raise UsageError(f"no key with id {args.id!r} in {path}")
        write_keys(path, kept)
        print(f"revoked {args.id}", file=sys.stderr)
        return 0
    if any(k.id == args.id for k in keys):
        raise UsageError(f"a key with id {args.id!r} exists in {path}: revoke it first to replace it")
    if args.burst is not None and args.rate is None:
        raise UsageError("--burst needs --rate")
    key = new_key()
    quota = {"rate_per_s": args.rate, "burst": args.burst} if args.rate is not None else None
    try:
        entry = ApiKey(id=args.id, sha256=key_hash(key), scopes=tuple(args.scopes), quota=quota)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    write_keys(path, [*keys, entry])
    print(key)
    print(f"key {args.id} stored in {path} (as its hash): the key above is shown only once", file=sys.stderr)
    return 0


def _read(path: Path) -> list[ApiKey]:
    try:
        return read_keys(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
