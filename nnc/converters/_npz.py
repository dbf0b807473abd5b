"""numpy .npz reading (never unpickling) and streaming writing."""
from __future__ import annotations

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
    with atomic_path(dest) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for p in planned:
                with zf.open(p.name + ".npy", "w", force_zip64=True) as fh:
                    arr = np.asanyarray(p.array)
                    if is_bfloat16(arr.dtype):     # numpy files cannot name bfloat16
                        arr = arr.astype(np.float32)
                    np.lib.format.write_array(fh, arr, allow_pickle=False)
