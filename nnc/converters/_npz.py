"""numpy .npz reading (never unpickling) and streaming writing."""
from __future__ import annotations

import zipfile
from typing import Mapping

import numpy as np

from ..dtypes import is_bfloat16
from ..errors import ModelFormatError
from ._common import TensorRecord, atomic_path, plan_restore


def read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise ModelFormatError(f"cannot read {path!r}: {e}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ModelFormatError(f"{path!r} is not a valid .npz file: {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ModelFormatError(f"{path!r} is a single .npy array, not an .npz archive of named arrays")
    out: dict[str, np.ndarray] = {}
    with z:
        for name in z.files:
            try:
                arr = z[name]
            except ValueError as e:  # object arrays need pickle, which we refuse
                raise ModelFormatError(f"{path!r}: array {name!r} cannot be loaded without pickle: {e}") from None
            except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
                raise ModelFormatError(f"{path!r}: array {name!r} is corrupt or truncated: {e}") from None
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
