"""issue 15: the distillation (CFD) and clustered-FL (CFL) servers decode uploads under limits derived from
the model / the public set, not the 16 GiB defaults (a 46-byte upload used to cost 2.5 GB). The bomb here
decodes to 16M elements (64 MiB) so that the pre-fix tree gets through it in about a second; the limits
refuse it from the header, before anything of that size exists. Fails on 0b8f26e."""
from dataclasses import replace

import numpy as np
import pytest

import nnc
from nnc import bitstream as bs

COLS = 1 << 20


def _bomb(name: str) -> bytes:
    """~41 bytes: a real all-zero (16, 64) tensor whose header is rewritten to (16, 2^20) columns. Row
    skipping codes each all-zero row with one flag, so the payload stays valid: it decodes to 16M zeros
    (64 MiB of float32) from 41 bytes; with 2^26 columns, 256 MiB and 600 MB peak RSS."""
    data = nnc.encode({name: np.zeros((16, 64), np.float32)})
    p = bs.parse(data)
    u = p.units[-1]
    raw = bs.write_unit(replace(u.body, tensor_dimensions=[16, COLS]), context=u.context, payload=bytes(u.payload))
    return bs.write_bitstream(p.units[:-1]) + raw


def test_cfl_update_codec_refuses_a_tensor_bigger_than_the_model():
    from nnc.fl.clustered import CFLConfig
    try:
        from nnc.fl.codecs import UpdateCodec
    except ImportError:                       # before the FL layers split
        from nnc.fl.clustered import UpdateCodec
    model = {"w": np.zeros((16, 8), np.float32), "b": np.zeros(16, np.float32)}
    data = _bomb("w")
    assert len(data) < 64
    with pytest.raises(nnc.NNCError) as ei:   # 0b8f26e: decodes all 16M zeros
        UpdateCodec(CFLConfig().qp).decode(data, model)
    assert isinstance(ei.value, nnc.LimitExceededError), ei.value


def test_cfd_soft_label_decoder_refuses_more_rows_than_the_public_set():
    from nnc.fl.distill import LabelCodecConfig, SoftLabelDecoder
    data = _bomb("sl.rows")
    assert len(data) < 64
    dec = SoftLabelDecoder(LabelCodecConfig(bits=2), shape=(300, 10))
    with pytest.raises(Exception) as ei:      # 0b8f26e: decodes all 16M zeros first, then KeyError 'sl.meta'
        dec.decode(data)
    assert isinstance(ei.value, nnc.LimitExceededError), repr(ei.value)
