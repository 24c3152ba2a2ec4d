"""API keys: a primary and a secondary key, stored as SHA-256 hashes, re-read when the file changes.

Rotation without a restart: clients move to the secondary key, the primary is
regenerated (``mvu keys regenerate FILE primary``), the server sees the new
file on the next request and the old primary key stops working at once.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path

from mvu.host.serving.errors import ServingError

__all__ = ["ApiKeys", "KeyFileError", "create_key_file", "regenerate_key", "main_keys"]

log = logging.getLogger("mvu.host.serving")
FORMAT = "mvu-api-keys/1"
SLOTS = ("primary", "secondary")


class KeyFileError(ValueError):
    """A key file that cannot be used."""


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise KeyFileError(f"{path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise KeyFileError(f"{path}: not JSON ({error})") from None
    keys = data.get("keys") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(keys, dict) or not all(
            isinstance(keys.get(slot), dict) and isinstance(keys[slot].get("sha256"), str) for slot in SLOTS):
        raise KeyFileError(f"{path}: not an mvu key file (format {FORMAT!r} with primary and secondary hashes); "
                           f"create one with `mvu keys create {path}`")
    return keys


def _write(path: Path, keys: dict[str, dict]) -> None:
    """Atomically, readable by the owner only: a crash leaves the old file or the new one."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump({"format": FORMAT, "keys": keys}, out, indent=2)
            out.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _new_slot() -> tuple[str, dict]:
    key = "mvu_" + secrets.token_urlsafe(32)
    return key, {"sha256": _hash(key), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def create_key_file(path: str | Path) -> dict[str, str]:
    """Write a new key file; returns the keys in clear (the only time they are shown)."""
    path = Path(path)
    if path.exists():
        raise KeyFileError(f"{path}: already exists; use `mvu keys regenerate {path} primary|secondary`")
    clear, stored = {}, {}
    for slot in SLOTS:
        clear[slot], stored[slot] = _new_slot()
    _write(path, stored)
    return clear


def regenerate_key(path: str | Path, slot: str) -> str:
    """Replace one key (the old one stops working); returns the new key in clear."""
    if slot not in SLOTS:
        raise KeyFileError(f"no key {slot!r}; the keys are {' and '.join(SLOTS)}")
    path = Path(path)
    keys = _read(path)
    key, keys[slot] = _new_slot()
    _write(path, keys)
    return key


class ApiKeys:
    """Checks ``Authorization`` values against a key file, re-reading it when it changes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._hashes: list[bytes] = []
        self._reload(initial=True)

    def _reload(self, initial: bool = False) -> None:
        try:
            stat = self.path.stat()
        except OSError as error:
            if initial:
                raise KeyFileError(f"{self.path}: {error.strerror}") from None
            log.warning("API key file %s is unreadable (%s); keeping the keys loaded before", self.path, error)
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        try:
            keys = _read(self.path)
        except KeyFileError as error:
            if initial:
                raise
            log.warning("%s; keeping the keys loaded before", error)
            return
        self._hashes, self._stamp = [bytes.fromhex(keys[slot]["sha256"]) for slot in SLOTS], stamp
        if not initial:
            log.info("API keys reloaded from %s", self.path)

    def check(self, authorization: str | None) -> None:
        """Accept ``<key>`` or ``Bearer <key>``; anything else is a 401 (the key itself is never logged)."""
        if not authorization:
            raise ServingError(401, "missing API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, rest = authorization.strip().partition(" ")
        key = rest.strip() if scheme.lower() == "bearer" and rest else authorization.strip()
        with self._lock:
            self._reload()
            hashes = self._hashes
        digest = hashlib.sha256(key.encode()).digest()
        if not any(hmac.compare_digest(digest, stored) for stored in hashes):
            raise ServingError(401, "invalid API key")


def main_keys(args: argparse.Namespace) -> int:
    """``mvu keys create|regenerate|show FILE [primary|secondary]``."""
    try:
        if args.action == "create":
            for slot, key in create_key_file(args.file).items():
                print(f"{slot:<9} {key}")
            print(f"stored hashed in {args.file}; the keys are not shown again")
        elif args.action == "regenerate":
            if not args.which:
                raise KeyFileError("say which key to regenerate: primary or secondary")
            print(f"{args.which:<9} {regenerate_key(args.file, args.which)}")
            print("the old key no longer works; a running server picks this up on its next request")
        else:
            for slot, entry in _read(Path(args.file)).items():
                print(f"{slot:<9} created {entry.get('created', '?')}  sha256 {entry['sha256'][:12]}...")
    except KeyFileError as error:
        raise SystemExit(f"mvu: {error}") from None
    return 0
