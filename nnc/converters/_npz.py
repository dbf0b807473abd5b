"""numpy .npz reading (never unpickling) and streaming writing."""
from __future__ import annotations

import io
import zipfile
from typing import Mapping

import numpy as np

from ..coding.dtypes import is_bfloat16
from ..errors import ModelFormatError
from ._common import TensorRecord, atomic_path, plan_restore
from ._zipscreen import screen_npz


def read_npz(path: str) -> dict[str, np.ndarray]:
    if zipfile.is_zipfile(path):
        screen_npz(path)      # declared vs compressed sizes, .npy headers vs entry sizes, the decoder budget
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ModelFormatError(f"cannot read {path!r}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        # numpy's own text would suggest allow_pickle, which nnc never uses: say it in nnc's words
        raise ModelFormatError(f"{path!r} is not an .npz archive (a zip of .npy arrays as numpy.savez writes), or "
                               "it is truncated; check the file, or pass --format if it is another model "
                               "format") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ModelFormatError(f"{path!r} is a single .npy array, not an .npz archive of named arrays")
    out: dict[str, np.ndarray] = {}
    with z:
        for name in z.files:
            try:
                arr = z[name]
            except ValueError:  # object arrays need pickle, which we refuse
                raise ModelFormatError(f"{path!r}: array {name!r} holds Python objects, which nnc never unpickles; "
                                       "save numeric arrays only") from None
            except (OSError, zipfile.BadZipFile, EOFError, KeyError):
                raise ModelFormatError(f"{path!r}: array {name!r} is corrupt or truncated; check the file") from None
            if arr.dtype.kind not in "fiub" or arr.dtype.itemsize > 8:
                raise ModelFormatError(f"{path!r}: array {name!r} has unsupported dtype {arr.dtype}")
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            out[name] = arr
    return out


def write_npz(dest: str, tensors: Mapping[str, np.ndarray], record: TensorRecord | None) -> None:
    """Write an uncompressed .npz like ``np.savez`` (any key is allowed, arrays are streamed one at a time).

    bfloat16 tensors are stored as float32 (numpy has no bfloat16); tied tensors are stored under each name.
    """
    planned = plan_restore(tensors, record)
    headers: dict = {}
    with atomic_path(dest) as tmp, open(tmp, "wb", buffering=1 << 20) as raw:
        # written front to back: each entry's sizes follow its data (a data descriptor) instead of zipfile
        # seeking back to patch the entry's header, which flushes the file buffer once per tensor
        with zipfile.ZipFile(_FrontToBack(raw), "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for p in planned:
                arr = np.asanyarray(p.array)
                if is_bfloat16(arr.dtype):     # numpy files cannot name bfloat16
                    arr = arr.astype(np.float32)
                if arr.nbytes <= _SMALL_MEMBER and arr.dtype.kind in "biuf":
                    # one write per member: the .npy header of this dtype and shape is the same for every tensor
                    # that has them (write_array formats it again per call; the zip stream per member costs more
                    # than a small tensor's data)
                    if not arr.flags.c_contiguous:
                        arr = arr.copy(order="C")      # (np.ascontiguousarray would make a scalar 1-d)
                    key = (arr.dtype.str, arr.shape)
                    head = headers.get(key)
                    if head is None:
                        head = headers[key] = _npy_header(arr)
                    info = zipfile.ZipInfo(p.name + ".npy")      # the entry zf.open(name, "w") makes
                    info.compress_type = zipfile.ZIP_STORED
                    zf.writestr(info, head + arr.tobytes())
                    continue
                with zf.open(p.name + ".npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)


class _FrontToBack:
    """A file seen by zipfile as a stream it cannot seek in."""

    def __init__(self, f):
        self._f = f

    def write(self, b):
        return self._f.write(b)

    def flush(self):
        self._f.flush()


#: Tensors up to this size go into the archive as one write (their .npy bytes are built in memory).
_SMALL_MEMBER = 1 << 16


def _npy_header(arr: np.ndarray) -> bytes:
    """The .npy header ``np.lib.format.write_array`` writes for the C-contiguous ``arr`` (its bytes up to the
    data)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    return data[:len(data) - arr.nbytes]
