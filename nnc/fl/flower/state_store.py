"""The client codec's state on the SuperNode's local disk, with only a small handle in ``context.state``.

Flower hands a ClientApp its :class:`~flwr.app.Context` as one protobuf (SuperNode <-> ClientApp process, twice
per message): an ArrayRecord of the codec state there costs two full serialisations per round and stops at
protobuf's 2 GiB (about 340 M parameters at 6 B/param). So the bulky arrays go to one file per (run, node):

    <state dir>/run-<run_id>/node-<node_id>.nncstate

written to a temporary file in the same directory, flushed, fsync'ed and renamed over the old one (a reader
sees the old state or the new one, never half of one). ``context.state`` keeps a ConfigRecord with the file's
name, size and SHA-256 and a random nonce. A state is only loaded when the file's size and digest equal the
handle's; a missing, truncated, corrupt or foreign file raises :class:`~nnc.errors.UpdateStateError`, which
``nnc_mod`` answers with a resync request (the server then starts the pair afresh: a catch-up, never a silent
failure).

The state directory is, in this order: ``node_config["nnc-state-dir"]`` (``flower-supernode --node-config
"nnc-state-dir='/var/lib/nnc'"``), the ``NNC_FL_STATE_DIR`` environment variable, ``$FLWR_HOME/nnc-state``,
``<temp dir>/nnc-fl-state-<uid>``. A run directory nobody wrote to for a week is removed on the next write.

File layout: ``b"NNCFLST1"``, a little-endian uint32 header length, a JSON header (scalars; per array: name,
dtype, shape, byte count), then the arrays' bytes in header order. No pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from ...errors import UpdateStateError

__all__ = ["state_dir_for", "write_state", "read_state", "StateHandle"]

MAGIC = b"NNCFLST1"
_HLEN = struct.Struct("<I")
_MAX_HEADER = 64 << 20
_CHUNK = 16 << 20
_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "float16", "float32", "float64", "bool"}

#: keys of the handle (a ConfigRecord in context.state)
StateHandle = dict


def state_dir_for(node_config: Mapping | None = None, override: str | os.PathLike | None = None) -> Path:
    """The directory a node keeps its codec state in (see the module docstring for the order)."""
    if override is not None:
        return Path(override)
    if node_config and "nnc-state-dir" in node_config:
        return Path(str(node_config["nnc-state-dir"]))
    if os.environ.get("NNC_FL_STATE_DIR"):
        return Path(os.environ["NNC_FL_STATE_DIR"])
    if os.environ.get("FLWR_HOME"):
        return Path(os.environ["FLWR_HOME"]) / "nnc-state"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"nnc-fl-state-{uid}"


#: run directories nobody wrote to for this long are removed on the next write (a node that comes back to one
#: later finds no file and resynchronises: correct, only a catch-up more)
STALE_RUN_SECONDS = 7 * 24 * 3600


def _prune_old_runs(root: Path, keep: Path) -> None:
    import shutil
    import time
    try:
        runs = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("run-") and d != keep]
    except OSError:
        return
    now = time.time()
    for d in runs:
        try:
            if now - d.stat().st_mtime > STALE_RUN_SECONDS:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def state_path(root: Path, run_id: int, node_id: int) -> Path:
    return Path(root) / f"run-{int(run_id)}" / f"node-{int(node_id)}.nncstate"


def _le(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.name not in _DTYPES:
        raise UpdateStateError(f"state array of dtype {a.dtype} cannot be stored")
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))


def write_state(path: Path, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, int]) -> StateHandle:
    """Write ``arrays`` and ``scalars`` to ``path`` atomically; returns the handle for ``context.state``.

    Arrays are written one after the other from their own buffers (no concatenated copy); the digest is
    computed on the way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nonce = secrets.token_hex(8)
    table = []
    for k, v in arrays.items():
        a = np.asarray(v)
        table.append({"name": str(k), "dtype": a.dtype.name, "shape": list(a.shape), "nbytes": int(a.nbytes)})
    header = json.dumps({"nonce": nonce, "scalars": {str(k): int(v) for k, v in scalars.items()},
                         "arrays": table}, separators=(",", ":")).encode()
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    size = 0
    _prune_old_runs(path.parent.parent, keep=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in (MAGIC, _HLEN.pack(len(header)), header):
                f.write(part)
                h.update(part)
                size += len(part)
            for v in arrays.values():
                a = _le(v)
                if a.nbytes == 0:
                    continue
                buf = memoryview(a.reshape(-1)).cast("B")
                f.write(buf)
                h.update(buf)
                size += len(buf)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return {"nnc.state.file": path.name, "nnc.state.nbytes": size, "nnc.state.sha256": h.hexdigest(),
            "nnc.state.nonce": nonce}


def read_state(path: Path, handle: Mapping) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Read the state ``handle`` names from ``path``, checking size and SHA-256 before anything is used.

    Raises :class:`UpdateStateError` naming the file and what is wrong (missing, size, digest, layout)."""
    path = Path(path)
    try:
        want_size = int(handle["nnc.state.nbytes"])
        want_digest = str(handle["nnc.state.sha256"])
        nonce = str(handle["nnc.state.nonce"])
    except (KeyError, TypeError, ValueError) as e:
        raise UpdateStateError(f"client state handle is incomplete ({e})") from None
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UpdateStateError(f"client state file {str(path)!r} cannot be read: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != want_size:
            raise UpdateStateError(f"client state file {str(path)!r} holds {size} bytes, its handle says "
                                   f"{want_size}")
        h = hashlib.sha256()
        head = f.read(len(MAGIC) + _HLEN.size)
        h.update(head)
        if len(head) < len(MAGIC) + _HLEN.size or head[:len(MAGIC)] != MAGIC:
            raise UpdateStateError(f"client state file {str(path)!r} is not an nnc state file")
        (hlen,) = _HLEN.unpack_from(head, len(MAGIC))
        if hlen > min(_MAX_HEADER, size):
            raise UpdateStateError(f"client state file {str(path)!r}: header of {hlen} bytes")
        raw = f.read(hlen)
        h.update(raw)
        try:
            header = json.loads(raw)
            table = header["arrays"]
            scalars = {str(k): int(v) for k, v in header["scalars"].items()}
            entries = [(str(e["name"]), str(e["dtype"]), tuple(int(s) for s in e["shape"]), int(e["nbytes"]))
                       for e in table]
        except (ValueError, KeyError, TypeError) as e:
            raise UpdateStateError(f"client state file {str(path)!r}: unreadable header ({e})") from None
        if header.get("nonce") != nonce:
            raise UpdateStateError(f"client state file {str(path)!r} is not the state this context wrote")
        pos = len(head) + hlen
        out: dict[str, np.ndarray] = {}
        for name, dt, shape, nbytes in entries:
            if dt not in _DTYPES or any(s < 0 for s in shape):
                raise UpdateStateError(f"client state file {str(path)!r}: array {name!r} of dtype {dt!r}")
            dtype = np.dtype(dt).newbyteorder("<")
            if nbytes != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) or pos + nbytes > size:
                raise UpdateStateError(f"client state file {str(path)!r}: array {name!r} does not fit the file")
            a = np.empty(shape, dtype)
            buf = memoryview(a.reshape(-1)).cast("B") if nbytes else None
            got = 0
            while got < nbytes:
                n = f.readinto(buf[got:got + _CHUNK])
                if not n:
                    raise UpdateStateError(f"client state file {str(path)!r} ends inside array {name!r}")
                h.update(buf[got:got + n])
                got += n
            out[name] = a
            pos += nbytes
        if pos != size:
            raise UpdateStateError(f"client state file {str(path)!r}: {size - pos} bytes after the last array")
        if h.hexdigest() != want_digest:
            raise UpdateStateError(f"client state file {str(path)!r} does not match its checksum (corrupt)")
    return out, scalars
