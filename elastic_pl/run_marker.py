"""A verifiable mark on the run directories this user's elastic-pl created.

Sharded checkpoints (``trainer.strategy=fsdp|fsdp2``) are directories of files that the reader
has to interpret; evaluate / predict / export read one only inside a run directory that carries
this mark (or with ``--trust-checkpoint``). A plain marker file could be copied along with a
foreign checkpoint, so the mark is an HMAC of a random nonce under a per-user secret key:
anyone can read it, only the holder of the key can make one.

The key lives in ``$ELASTIC_PL_RUN_KEY`` if set, else ``$XDG_CONFIG_HOME/elastic-pl/run-key``
(``~/.config/elastic-pl/run-key``), created on first use with mode 0600. On a cluster whose nodes
share the home directory every node verifies the marks the others wrote.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .errors import RunKeyError

MARKER_NAME = "run_marker.json"
_DOMAIN = b"elastic-pl run directory v1\0"
KEY_HINT = ("point ELASTIC_PL_RUN_KEY to a file of your own (made on first use), or fix this one; run directories "
            "marked with another key are not trusted")


def key_path() -> Path:
    if os.environ.get("ELASTIC_PL_RUN_KEY"):
        return Path(os.environ["ELASTIC_PL_RUN_KEY"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "elastic-pl" / "run-key"


def _read_key(path: Path) -> Optional[bytes]:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return key if len(key) >= 16 else None


def _key(create: bool) -> Optional[bytes]:
    """The per-user key; with ``create`` made if absent (atomically: concurrent ranks agree)."""
    path = key_path()
    key = _read_key(path)
    if key is not None or not create:
        return key
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".run-key-")
    except OSError as e:
        raise RunKeyError(f"{path}: cannot create the run-directory key ({e.strerror}); {KEY_HINT}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process made the key first: use theirs
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    key = _read_key(path)
    if key is None:
        raise RunKeyError(f"{path}: not a readable run-directory key; {KEY_HINT}")
    return key


def check_key() -> None:
    """Before a run writes anything: the key file, if there is one, holds a key, else it can be made."""
    path = key_path()
    if path.exists() or path.is_symlink():
        if _read_key(path) is None:
            raise RunKeyError(f"{path}: not a readable run-directory key (64 hex digits); {KEY_HINT}")
        return
    ancestor = next(p for p in path.parents if p.exists())
    if not ancestor.is_dir():
        raise RunKeyError(f"{path}: cannot create the run-directory key: {ancestor} is not a directory; {KEY_HINT}")


def _mac(key: bytes, nonce: str) -> str:
    return hmac.new(key, _DOMAIN + nonce.encode(), hashlib.sha256).hexdigest()


def write_marker(run_dir: Path) -> None:
    """Mark ``run_dir`` as made here. Called only when a run directory is created: a directory
    that existed before (someone else's, copied in) is never marked afterwards."""
    nonce = secrets.token_hex(16)
    body = {"format_version": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "nonce": nonce, "hmac": _mac(_key(create=True), nonce)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER_NAME).write_text(json.dumps(body, indent=1) + "\n")


def is_marked(run_dir: Path) -> bool:
    """True iff ``run_dir`` holds a ``config.yaml`` and a mark made with this user's key."""
    marker = Path(run_dir) / MARKER_NAME
    if not (Path(run_dir) / "config.yaml").is_file() or not marker.is_file():
        return False
    try:
        body = json.loads(marker.read_text())
        nonce, mac = str(body["nonce"]), str(body["hmac"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    key = _key(create=False)
    return key is not None and hmac.compare_digest(_mac(key, nonce), mac)
