"""ONNX models for the converter zoo test and benchmarks: the float models shipped in PyPI packages, int8 versions
made from them with onnxruntime's quantisation tools (dynamic, static QDQ, static QOperator; int8 and uint8,
per tensor and per channel), and small graphs built here around shape-like constants."""
from __future__ import annotations

import glob
import os

import numpy as np

from support.realmodels import model_paths, package_dir


def float_models() -> dict[str, str]:
    out = {k: v for k, v in model_paths().items() if v.endswith(".onnx")}
    d = package_dir("silero_vad")
    if d:
        for p in sorted(glob.glob(os.path.join(d, "data", "*.onnx"))):
            key = "silero_" + os.path.basename(p)[:-5]
            if p != out.get("silero_vad"):
                out[key] = p
    return out


def feeds(model, seed: int = 0, key: str = "") -> dict[str, np.ndarray]:
    """Inputs for a model: images 1x3x48x96-ish for CNNs, audio chunks for VAD, zeros of the right dtype else."""
    import onnx
    rng = np.random.default_rng(seed)
    g = model.graph
    inits = {i.name for i in g.initializer}
    out = {}
    for inp in g.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        if len(dims) == 4 and dims[1] == 3:      # image N,3,H,W (OCR models: H 48, W multiple of 32)
            default = [1, 3, 64, 192] if "det" in key else [1, 3, 48, 192]
            shape = [d if d is not None else x for d, x in zip(dims, default)]
            out[inp.name] = rng.uniform(-1, 1, shape).astype(dt)
        elif inp.name in ("sr",):
            out[inp.name] = np.array(16000, dtype=dt)
        elif inp.name in ("state", "h", "c"):
            shape = [d if d is not None else 1 for d in dims]
            out[inp.name] = np.zeros(shape, dt)
        elif inp.name == "input" and len(dims) == 2:
            shape = [1, dims[1] or 512]
            out[inp.name] = (rng.standard_normal(shape) * 0.1).astype(dt)
        else:
            shape = [d if d is not None else 1 for d in dims]
            out[inp.name] = rng.standard_normal(shape).astype(dt) if dt.kind == "f" else np.ones(shape, dt)
    return out


class _Reader:
    def __init__(self, model_path: str, n: int = 4):
        import onnx
        m = onnx.load(model_path)
        self.items = iter([feeds(m, seed=100 + i, key=os.path.basename(model_path)) for i in range(n)])

    def get_next(self):
        return next(self.items, None)


def _constants_to_initializers(src: str, dest: str) -> str:
    """onnxruntime's quantiser expects weights as initializers; PaddlePaddle exports keep some in Constants."""
    import onnx
    if os.path.isfile(dest):
        return dest
    m = onnx.load(src)
    keep = []
    for n in m.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    if m.opset_import[0].version < 13:      # per-channel DequantizeLinear (axis) needs opset 13
        from onnx import version_converter
        m = version_converter.convert_version(m, 13)
    onnx.save(m, dest)
    return dest


def quantized_models(src: dict[str, str], folder: str) -> dict[str, str]:
    """int8/uint8 models made with onnxruntime.quantization from the float models in ``src``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    os.makedirs(folder, exist_ok=True)
    out = {}

    def make(key, fn):
        path = os.path.join(folder, key + ".onnx")
        if not os.path.isfile(path):
            fn(path)
        out[key] = path

    if "ocr_cls" in src:
        p = _constants_to_initializers(src["ocr_cls"], os.path.join(folder, "ocr_cls_prep.onnx"))
        make("ocr_cls_qdq_s8_perchannel", lambda d: quantize_static(
            p, d, _Reader(p), quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8))
        make("ocr_cls_qop_u8", lambda d: quantize_static(
            p, d, _Reader(p), quant_format=QuantFormat.QOperator, per_channel=False, weight_type=QuantType.QUInt8,
            activation_type=QuantType.QUInt8))
        make("ocr_cls_dynamic_u8", lambda d: quantize_dynamic(p, d, weight_type=QuantType.QUInt8))
    if "ocr_det" in src:
        p = _constants_to_initializers(src["ocr_det"], os.path.join(folder, "ocr_det_prep.onnx"))
        make("ocr_det_qdq_u8_perchannel", lambda d: quantize_static(
            p, d, _Reader(p, 2), quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QUInt8,
            activation_type=QuantType.QUInt8))
    if "ocr_rec" in src:
        p = _constants_to_initializers(src["ocr_rec"], os.path.join(folder, "ocr_rec_prep.onnx"))
        make("ocr_rec_dynamic_s8", lambda d: quantize_dynamic(p, d, weight_type=QuantType.QInt8))
        make("ocr_rec_qop_s8_perchannel", lambda d: quantize_static(
            p, d, _Reader(p, 2), quant_format=QuantFormat.QOperator, per_channel=True, weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8))
    if "silero_silero_vad_16k_sequence" in src:   # LSTM -> DynamicQuantizeLSTM, Conv -> ConvInteger
        p = src["silero_silero_vad_16k_sequence"]
        make("silero_seq_dynamic_u8", lambda d: quantize_dynamic(p, d, weight_type=QuantType.QUInt8))
        make("silero_seq_dynamic_s8", lambda d: quantize_dynamic(p, d, weight_type=QuantType.QInt8))
    return out


def shape_graphs() -> dict[str, object]:
    """Small float graphs whose shape-like inputs are float or integer initializers reached through Cast,
    Identity and Concat: what a coded model must restore exactly to run at all."""
    import onnx
    from onnx import TensorProto as TP, helper as h, numpy_helper as nh
    rng = np.random.default_rng(7)
    out = {}

    def model(nodes, inits, x_shape, y_rank, opset=17):
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, x_shape)],
                         [h.make_tensor_value_info("y", TP.FLOAT, [f"d{i}" for i in range(y_rank)])],
                         [nh.from_array(v, k) for k, v in inits.items()])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    w = rng.standard_normal((8, 3, 3, 3)).astype("f4")
    # a YOLO-like neck: Conv, then Resize by float scales [1,1,2,2] given as an initializer (as exporters write it)
    out["resize_scales"] = model(
        [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         h.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
         h.make_node("Conv", ["r", "w2"], ["y"])],
        {"w": w, "scales": np.array([1, 1, 2, 2], "f4"),
         "w2": rng.standard_normal((4, 8, 1, 1)).astype("f4")}, [1, 3, 8, 8], 4)
    # Resize sizes computed: Concat(Shape(x)[:2], Cast(float sizes)) -> int64
    out["resize_sizes_cast_concat"] = model(
        [h.make_node("Shape", ["x"], ["s"]),
         h.make_node("Slice", ["s", "st", "en"], ["nc"]),
         h.make_node("Cast", ["hw_f"], ["hw"], to=TP.INT64),
         h.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
         h.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="linear"),
         h.make_node("Conv", ["r", "w"], ["y"])],
        {"st": np.array([0], "i8"), "en": np.array([2], "i8"), "hw_f": np.array([16, 24], "f4"), "w": w},
        [1, 3, 8, 8], 4)
    # Reshape by a float shape tensor turned to int64 through Identity + Cast; big enough (20 elements) to be
    # coded by size alone
    shp = np.array([1, 8, 8, 8] + [1] * 16, "f4")
    out["reshape_float_shape"] = model(
        [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         h.make_node("Identity", ["shp_f"], ["shp_i"]),
         h.make_node("Cast", ["shp_i"], ["shp"], to=TP.INT64),
         h.make_node("Reshape", ["c", "shp"], ["r"]),
         h.make_node("ReduceSum", ["r"], ["y"], keepdims=0)],
        {"w": w, "shp_f": shp}, [1, 3, 8, 8], 0)
    # Slice starts/ends/axes/steps, Pad pads, Expand and Tile repeats from float initializers cast to int64
    out["slice_pad_expand_tile"] = model(
        [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         h.make_node("Cast", ["sl_f"], ["sl"], to=TP.INT64),
         h.make_node("Split", ["sl"], ["st", "en", "ax", "sp"], axis=0, num_outputs=4),
         h.make_node("Slice", ["c", "st", "en", "ax", "sp"], ["s"]),
         h.make_node("Cast", ["pads_f"], ["pads"], to=TP.INT64),
         h.make_node("Pad", ["s", "pads"], ["p"]),
         h.make_node("Cast", ["rep_f"], ["rep"], to=TP.INT64),
         h.make_node("Tile", ["p", "rep"], ["t"]),
         h.make_node("Cast", ["exp_f"], ["ex"], to=TP.INT64),
         h.make_node("Expand", ["t", "ex"], ["y"])],
        {"w": w, "sl_f": np.array([1, 7, 2, 1], "f4"), "pads_f": np.array([0, 0, 1, 2, 0, 0, 3, 1], "f4"),
         "rep_f": np.array([1, 1, 2, 1], "f4"), "exp_f": np.array([2, 1, 1, 1], "f4")}, [1, 3, 8, 8], 4, opset=18)
    # ConstantOfShape and TopK k from float initializers; Clip with tiny float bounds
    out["constantofshape_topk_clip"] = model(
        [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         h.make_node("Clip", ["c", "lo", "hi"], ["cl"]),
         h.make_node("Flatten", ["cl"], ["f"], axis=1),
         h.make_node("Cast", ["k_f"], ["k"], to=TP.INT64),
         h.make_node("TopK", ["f", "k"], ["v", "i"]),
         h.make_node("Cast", ["cs_f"], ["cs"], to=TP.INT64),
         h.make_node("ConstantOfShape", ["cs"], ["z"], value=h.make_tensor("v", TP.FLOAT, [1], [0.5])),
         h.make_node("Add", ["v", "z"], ["y"])],
        {"w": w, "lo": np.array(-1e-3, "f4"), "hi": np.array(6.0, "f4"), "k_f": np.array([5], "f4"),
         "cs_f": np.array([1, 5], "f4")}, [1, 3, 8, 8], 2)
    return out
