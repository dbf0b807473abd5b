"""DeepCABAC payloads of the NNCodec 2.1.3 test vectors (NNC_BITSTREAM.md Appendix B).

Each payload (the bytes after the NDU header) must decode to the listed integers, and re-encoding those
integers with the same settings must reproduce the payload byte for byte.
"""

import numpy as np
import pytest

from nnc.coding.quant import step_size
from nnc.deepcabac import (
    EncodeOptions,
    EntryPoint,
    TensorCoding,
    decode_payload,
    encode_payload,
    block_row_count,
    quantize,
)

# TV1: profile 0, NNR_PT_INT, parameter optimisation off.
TV1_CABAC = bytes.fromhex("8d00407ee5f0")
TV1_Q = np.array([[0, 1, -2], [3, 0, -1]], dtype=np.int32)

# TV2: profile 1, DQ, parameter optimisation on; weight qp -38, bias qp -75 (qp_density 2).
TV2_WEIGHT = bytes.fromhex(
    "d96c8429e966468c0d98e22d44c86b0be4118017a94954cd30cc3166ed23fcb212e67e754d005dc9c0")
TV2_BIAS = bytes.fromhex("b4d8000738003a1bb000176527a00031e66e")
TV2_WEIGHT_Q = np.array([[0, 4, -10, 14, -19, 22], [23, -19, 14, -10, 6, 0],
                         [34, -33, 31, -29, 25, -22], [29, -31, 33, -33, 34, -33]], dtype=np.int32)
TV2_BIAS_Q = np.array([4194, -8388, 12583, 0], dtype=np.int32)

# TV3: profile 1, no DQ, parameter optimisation off, scan order 1, row skipping, qp -36.
TV3_CABAC = bytes.fromhex(
    "dbf5d2ac0040009a4001a44013cc02b2d9400fb31406f7fe03217800002a46d488b734435159cd1a9b885007c7f8180b01"
    "37b608d0b7f826271f9a95d6b8dbc0a53c5f841d416f3732cbf0534334a78fe42a1c4f8c800421c07279f100d000ce8466"
    "f095ec50686550511070033d0b75200432be447e80e23a2ccde08ae124687c2c3700e92048fe774740de09174060b80c31"
    "018e5a89298ac45132a0de68057a0a5f1614c9bceea5ead500b9e8b00c36751d04ab68b45f4911e3de31810051200e6fa0"
    "045b9c07b290105c04e1100756d00c2050148d7504388d02853bb38504c3fe1c2a320b4ea7c8421900f99aa20cf015e8f7"
    "a1840858")


def test_tv1_decode_and_reencode():
    coding = TensorCoding(shape=(2, 3), profile=0, qp_bits=None)
    dec = decode_payload(TV1_CABAC, [coding])
    np.testing.assert_array_equal(dec.levels[0], TV1_Q)
    assert dec.qp_offsets == [None]
    assert dec.consumed == len(TV1_CABAC)
    data, eps = encode_payload([(TV1_Q, coding, 0, EncodeOptions(param_opt=False))])
    assert data == TV1_CABAC
    assert eps == [[]]


def test_tv2_decode_and_reencode():
    w = TensorCoding(shape=(4, 6), profile=1, dq=True, qp_bits=8)
    b = TensorCoding(shape=(4,), profile=1, dq=True, qp_bits=8)
    dw = decode_payload(TV2_WEIGHT, [w])
    np.testing.assert_array_equal(dw.levels[0], TV2_WEIGHT_Q)
    assert dw.qp_offsets == [-38]
    db = decode_payload(TV2_BIAS, [b])
    np.testing.assert_array_equal(db.levels[0], TV2_BIAS_Q)
    assert db.qp_offsets == [-75]
    assert encode_payload([(TV2_WEIGHT_Q, w, -38, EncodeOptions())])[0] == TV2_WEIGHT
    assert encode_payload([(TV2_BIAS_Q, b, -75, EncodeOptions())])[0] == TV2_BIAS


def test_tv2_quantizer_reproduces_levels():
    i, j = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    weight = (np.sin(7 * i + 3 * j) * 0.05).astype(np.float32)
    q = quantize(weight, step_size(-38, 2), dq=True)
    np.testing.assert_array_equal(q, TV2_WEIGHT_Q)
    bias = np.array([0.01, -0.02, 0.03, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(quantize(bias, step_size(-75, 2), dq=True), TV2_BIAS_Q)


def _tv3_levels():
    i, j = np.meshgrid(np.arange(20), np.arange(10), indexing="ij")
    w = (np.cos(5 * i + 11 * j) * 0.04).astype(np.float32)
    w[3] = 0
    return w


def test_tv3_decode_and_reencode_with_entry_points():
    coding = TensorCoding(shape=(20, 10), profile=1, scan_order=1, qp_bits=8)
    dec = decode_payload(TV3_CABAC, [coding])
    q = dec.levels[0]
    assert dec.qp_offsets == [-36]
    assert dec.row_skip_flags == [True]
    assert dec.hdsp_flags == [False]
    assert not q[3].any()
    # The stored levels are the URQ levels of the generating tensor.
    np.testing.assert_array_equal(q, quantize(_tv3_levels(), step_size(-36, 2), dq=False, scan_order=1))
    expected_eps = [EntryPoint(0, 0, 690), EntryPoint(17, 0, 798)]
    assert dec.entry_points == [expected_eps]
    assert block_row_count(TensorCoding(shape=(20, 10), scan_order=1)) - 1 == 2   # entry points
    data, eps = encode_payload([(q, coding, -36, EncodeOptions(param_opt=False, row_skipping=True))])
    assert data == TV3_CABAC
    assert eps == [expected_eps]


@pytest.mark.parametrize("cut", [0, 1, 5, 40])
def test_truncated_test_vector_raises(cut):
    from nnc.errors import BitstreamError

    w = TensorCoding(shape=(4, 6), profile=1, dq=True, qp_bits=8)
    with pytest.raises(BitstreamError):
        decode_payload(TV2_WEIGHT[:cut], [w])
