"""The typed binding of the CABAC core (nnc.deepcabac._core) and where its errors say they happened.

* a failure of the core keeps its location: ``tensor_index`` (tensor of the NDU), ``position`` (element) and
  ``payload_bit_offset`` on the raised nnc.errors exception, and ``nnc.decode`` adds the unit and the byte;
* the binding takes typed objects (TensorSpec, EncodeSettings) and rejects anything else with a TypeError that
  names the argument; ``nnc.deepcabac`` turns a TensorCoding field of the wrong type into a ConfigError naming it.
"""
from __future__ import annotations

import numpy as np
import pytest

import nnc
from nnc import deepcabac as dc
from nnc.bitstream import parse
from nnc.errors import BitstreamError, ConfigError, InputError, TruncatedBitstreamError

RNG = np.random.default_rng(5)
C1 = dc.TensorCoding(shape=(20,), qp_bits=8)
C2 = dc.TensorCoding(shape=(30, 16), profile=0, qp_bits=None, unary_length=3)
Q1 = RNG.integers(-50, 50, 20).astype(np.int32)
Q2 = RNG.integers(-10**8, 10**8, (30, 16)).astype(np.int32)
DATA, _ = dc.encode_payload([(Q1, C1, 3, dc.EncodeOptions()), (Q2, C2, 0, dc.EncodeOptions(param_opt=False))])


def test_truncated_payload_error_names_tensor_element_and_bit():
    cut = DATA[:len(DATA) // 2]  # ends inside the second tensor
    with pytest.raises(TruncatedBitstreamError) as ei:
        dc.decode_payload(cut, [C1, C2])
    e = ei.value
    assert e.code == "PAYLOAD_TRUNCATED"
    assert e.tensor_index == 1
    assert e.position is not None and 0 <= e.position < C2.size
    assert f"element {e.position}" in str(e)
    assert e.payload_bit_offset is not None and e.payload_bit_offset >= 8 * len(cut)


def _first_overflowing_mutation():
    for pos in range(len(DATA)):
        bad = bytearray(DATA)
        bad[pos] = 0
        try:
            dc.decode_payload(bytes(bad), [C1, C2])
        except BitstreamError as e:
            if e.code == "PAYLOAD_CORRUPT" and e.tensor_index is not None:
                return pos, bytes(bad), e
    raise AssertionError("no mutation makes a level overflow")


def test_corrupt_payload_error_names_tensor_element_and_bit():
    pos, _, e = _first_overflowing_mutation()
    assert type(e) is BitstreamError
    assert e.tensor_index == 1
    assert e.position is not None and 0 <= e.position < C2.size
    assert f"tensor 1, element {e.position}" in str(e)
    # the decoder noticed after it had read the damaged byte (it reads at most a few bytes ahead)
    assert 8 * pos <= e.payload_bit_offset <= 8 * len(DATA) + 16


def test_errors_after_the_last_tensor_have_no_tensor_but_a_bit_position():
    with pytest.raises(BitstreamError) as ei:
        dc.decode_payload(DATA + b"\0\0\0", [C1, C2])
    e = ei.value
    assert e.code == "PAYLOAD_SIZE_MISMATCH"
    assert e.tensor_index is None and e.position is None
    assert e.payload_bit_offset is not None and e.payload_bit_offset > 0


def test_encoder_errors_carry_tensor_and_element():
    q = np.zeros((4, 4), np.int32)
    q[2, 1] = 1  # odd level in DQ state 0: wrong parity
    with pytest.raises(InputError, match="parity") as ei:
        dc.encode_payload([(Q1, C1, 0, dc.EncodeOptions()),
                           (q, dc.TensorCoding(shape=(4, 4), dq=True), 0, dc.EncodeOptions())])
    assert (ei.value.tensor_index, ei.value.position) == (1, 9)


def test_decode_adds_unit_and_byte_to_the_cores_location():
    w = RNG.standard_normal((64, 48)).astype(np.float32)
    data = nnc.encode({"w": w}, nnc.EncoderConfig(qp=-20))
    units = parse(data).units
    ndu = max(units, key=lambda u: len(u.payload or b""))
    start = ndu.offset + ndu.header_size
    found = None  # the first byte of the payload whose corruption the core notices inside the tensor
    for at in range(start, start + len(ndu.payload)):
        bad = bytearray(data)
        bad[at] = 0
        try:
            nnc.decode(bytes(bad))
        except BitstreamError as e:
            if e.tensor_index is not None:
                found = at, e
                break
    assert found is not None, "no single-byte corruption of the payload was detected inside the tensor"
    at, e = found
    assert e.unit_index == units.index(ndu)
    assert e.tensor_index == 0 and e.position is not None
    assert e.syntax_path == "NNR_NDU.payload"
    assert e.byte_offset == start + min(e.payload_bit_offset // 8, len(ndu.payload))
    assert at <= e.byte_offset <= start + len(ndu.payload)


def test_binding_rejects_wrong_typed_specs():
    buf = np.frombuffer(DATA, np.uint8)
    outs = [np.empty(C1.size, np.int32), np.empty(C2.size, np.int32)]
    with pytest.raises(TypeError, match=r"specs\[1\] must be nnc\.deepcabac\._core\.TensorSpec, got tuple"):
        dc._core.decode(buf, [dc._core.TensorSpec(20, 1), (30, 16, 0, 3, 0, 0, 0, 0, 0, 0)], outs, None, 1)
    with pytest.raises(TypeError, match="tca_base must be a 1-D C-contiguous int32"):
        dc._core.TensorSpec(4, 4, parent_present=True, tca_base=np.zeros(16, np.int64))
    with pytest.raises(TypeError, match=r"settings\[0\] must be nnc\.deepcabac\._core\.EncodeSettings"):
        dc._core.encode([Q1], [dc._core.TensorSpec(20, 1)], [{"param_opt": True}])
    with pytest.raises(TypeError):
        dc._core.TensorSpec(4.0, 4)
    with pytest.raises(TypeError):  # no silent conversion (and no copy) of the level arrays
        dc._core.encode([Q1.astype(np.int64)], [dc._core.TensorSpec(20, 1)], [dc._core.EncodeSettings()])
    spec = dc._core.TensorSpec(30, 16, profile=0, qp_bits=0, unary_length=3)
    assert (spec.height, spec.width, spec.profile, spec.qp_bits, spec.unary_length, spec.tca_base) == \
        (30, 16, 0, 0, 3, None)


@pytest.mark.parametrize("field,value", [("qp_bits", 8.0), ("scan_order", "1"), ("unary_length", 3.5)])
def test_wrong_typed_coding_field_is_a_config_error_naming_it(field, value):
    coding = dc.TensorCoding(shape=(20,), **{field: value})
    with pytest.raises(ConfigError, match=f"tensor 0: TensorCoding.{field} must be an integer"):
        dc.decode_payload(DATA, [coding, C2])

