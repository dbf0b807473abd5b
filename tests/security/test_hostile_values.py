"""Issue 15 item 5: values that would overflow are typed NNCErrors with a location, never OverflowError/inf."""
import numpy as np
import pytest

import _bombs_path  # noqa: F401  (puts benchmarks/ on sys.path)
import bombs
import nnc


def test_codebook_values_beyond_int64_are_a_bitstream_error():
    data = bombs.codebook_overflow()                     # ~330 KB, codebook values pass 2**63
    for cfg in (None, nnc.DecoderConfig.strict()):
        with pytest.raises(nnc.BitstreamError) as ei:
            nnc.decode(data, cfg)
        assert ei.value.unit_index == 3 and ei.value.syntax_path.startswith("NNR_NDU.codebook")


def test_integer_tensor_signalled_as_float16_never_decodes_to_inf():
    data = bombs.int_as_float16()
    with pytest.raises(nnc.BitstreamError, match="float16") as ei:
        nnc.decode(data)
    assert ei.value.unit_index == 3


def test_integer_tensor_signalled_as_int8_does_not_wrap():
    data = nnc.encode({"w": np.array([[1000, -1], [3, 4]], np.int32)})
    data = bombs.patch_last_ndu(data, nnr_decompressed_data_format_present_flag=1, nnr_decompressed_data_format=5)
    with pytest.raises(nnc.BitstreamError, match="int8"):
        nnc.decode(data)


@pytest.mark.parametrize("value", [3e38, -3.4e38, 1e38, 1e19])
@pytest.mark.parametrize("cfg", [nnc.EncoderConfig(), nnc.EncoderConfig(dq=False)], ids=["dq", "urq"])
def test_encoding_values_that_cannot_be_coded_is_an_input_error(value, cfg):
    with pytest.raises(nnc.InputError, match="qp"):
        nnc.encode({"w": np.array([[value, 1.0], [0.0, 2.0]], np.float32)}, cfg)
    # the largest magnitudes the coarsest qp can still carry keep working
    x = np.array([[1e18, 1.0], [0.0, -5e17]], np.float32)
    out = nnc.decode(nnc.encode({"w": x}, cfg))["w"]
    assert np.isfinite(out).all() and abs(out[0, 0] - 1e18) / 1e18 < 1e-3
