"""API keys: made once, shown once, stored as their SHA-256 only.

A key is ``mlg_`` and 43 characters of ``secrets.token_urlsafe`` (256 random bits): too many to
guess, so one fast hash is enough to store it (a slow password hash protects low-entropy secrets
people choose, and would cost every request). The gateway looks a presented key up by its hash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serving.auth.principal import Principal
from serving.auth.settings import ApiKey

PREFIX = "mlg_"

log = logging.getLogger(__name__)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: Path) -> list[ApiKey]:
    """The keys of a key file (YAML or JSON: ``{"keys": [...]}``); raises ValueError if invalid."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the API key file {path}: {type(exc).__name__}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"the API key file {path} must hold a 'keys' list")
    try:
        keys = [ApiKey.model_validate(entry) for entry in entries]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"the API key file {path}: {where}: {first['msg']}") from None
    ids = [k.id for k in keys]
    if len(ids) != len(set(ids)):
        raise ValueError(f"the API key file {path} names a key id twice")
    return keys


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace the key file atomically, readable by its owner only."""
    document: dict[str, Any] = {"keys": [k.model_dump(mode="json", exclude_none=True) for k in keys]}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(document, out, sort_keys=False)
    os.replace(partial, path)


class KeyStore:
    """The keys a gateway accepts: inline ones and a key file, re-read when the file changes
    (a rotated Kubernetes Secret) at most every ``reload_s``. A file that turns unreadable or
    invalid keeps the keys read last (logged); one that is so at start fails the start."""

    def __init__(self, inline: tuple[ApiKey, ...], path: Path | None, reload_s: float = 5.0) -> None:
        self.inline, self.path, self.reload_s = inline, path, reload_s
        self._stamp: tuple[int, ...] | None = None
        self._checked = 0.0
        self._by_hash: dict[str, Principal] = {}
        self._load(read_keys(path) if path is not None else [])
        if path is not None:
            self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    def lookup(self, key: str) -> Principal | None:
        """The key's principal, or None for a key that is not (or no longer) valid."""
        if self.path is not None and time.monotonic() - self._checked >= self.reload_s:
            self.reload()
        return self._by_hash.get(key_hash(key))

    def reload(self) -> None:
        """Re-read the key file if it changed."""
        self._checked = time.monotonic()
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            keys = read_keys(self.path)
        except ValueError as exc:
            if stamp is not None or self._stamp is not None:
                log.error("%s; the keys read before stay in force", exc)
            self._stamp = stamp
            return
        self._stamp = stamp
        self._load(keys)
        log.info("API keys reloaded from %s: %d keys", self.path, len(self._by_hash))

    def _file_stamp(self) -> tuple[int, ...] | None:
        """What tells a changed file: its modification time and size alone miss a key rotated in
        place (same size) by a tool that keeps modification times, or within the file system's
        timestamp granularity; a replaced file (write_keys, a Kubernetes Secret's symlink swap)
        has a new inode, and any write a new ctime, which no tool can set back."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size

    def _load(self, from_file: list[ApiKey]) -> None:
        by_hash = {}
        for key in (*self.inline, *from_file):
            by_hash[key.sha256] = Principal(f"key:{key.id}", "key", frozenset(key.scopes), key.quota)
        self._by_hash = by_hash
