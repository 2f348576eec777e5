"""CTranslate2 Whisper weights -> ONNX encoder and decoder graphs, built with ``onnx.helper``
(no torch), so the same two files run on the CPU, CUDA and TensorRT execution providers.

The CTranslate2 ``model.bin`` (binary version 6) is: ``u32`` version, the spec name, ``u32``
revision, ``u32`` variable count, then per variable its name, ``u8`` rank, ``u32`` dims,
``u8`` dtype (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), ``u32`` byte count
and the raw little-endian data; then ``u32`` alias count and (alias, target) name pairs.
Strings are ``u16`` length (including a trailing NUL) and the UTF-8 bytes. Whisper's fused
projections: ``self_attention/linear_0`` is Q, K, V stacked; the decoder's cross
``attention/linear_0`` is Q and ``attention/linear_1`` is K, V stacked.

Graphs (opset 17, float32 in and out). ``precision="int8"`` (the default) then quantises
weights with ``onnxruntime.quantization.quantize_dynamic`` where it pays and keeps accuracy
(docs/asr.md has the measurements): every MatMul weight of the encoder (~35 % less CPU), and
in the decoder the output projection (51,864 x 384, tied to the embeddings: a float32 copy is
80 MB read per token; int8 makes a decode step 2-3x cheaper), the rest of tiny.en's decoder
staying float32 (quantising all of it cost accuracy on synthetic speech); Whisper base's
decoder is int8 throughout (``decoder="all"``: as accurate, 21-25 % less CPU). Activations are
quantised per call (dynamic), weights per tensor (per column with ``per_channel``, as
Whisper base is prepared) with 7-bit ranges (``reduce_range``: AVX2's
u8 x s8 multiply-add saturates otherwise). ``conversion.json`` records what was done.

- encoder: ``mel`` [B, 80, 2T] -> ``cross_k`` [L, B, H, dh, T], ``cross_v`` [L, B, H, T, dh]
  (the decoder's cross-attention keys, pre-transposed, and values). ``T`` is any length up to
  1500 frames: the positional embedding is sliced to the input, so short audio costs little.
- decoder: ``tokens`` [B, S], ``past_k``/``past_v`` [L, B, H, P, dh], ``cross_k_0`` ..
  ``cross_k_{L-1}`` [B, H, dh, T] and ``cross_v_0`` .. [B, H, T, dh] (one input per layer:
  taking layer i out of one stacked input copied every layer's keys and values at every
  token, 13 % of a Whisper base decoder step at 10 s of audio) -> ``logits`` [B, S, V],
  ``present_k``/``present_v`` [L, B, H, P+S, dh]. Positions start at P (the cache length);
  attention within the S new tokens is causal. :data:`GRAPH_VERSION` numbers the graphs.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tidegate.engines.errors import ModelError
from tidegate.engines.runtime import Array

OPSET = 17
PRECISIONS = ("int8", "fp32")
OUTPUT_PROJECTION = "output_projection"  # the decoder's logits MatMul (node name)
DECODER_INT8 = (OUTPUT_PROJECTION, "all")  # the decoder MatMuls an int8 conversion quantises
#: the graphs this converter builds, numbered anew whenever they change (2: the decoder takes
#: the cross keys and values one input per layer; 3: GELU in the form ONNX Runtime fuses),
#: recorded in a model spec's recipe so that a model prepared with older graphs is prepared
#: again
GRAPH_VERSION = 3
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: Path) -> tuple[str, dict[str, Array]]:
    """The spec name and the variables (aliases resolved) of a CTranslate2 ``model.bin``."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def text() -> str:
        nonlocal pos
        n = take("H")
        s = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("I")
    if version != 6:
        raise ModelError(f"{path}: CTranslate2 binary version {version}, expected 6")
    spec = text()
    take("I")  # spec revision
    out: dict[str, Array] = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype = take("B")
        nbytes = take("I")
        if dtype not in _DTYPES:
            raise ModelError(f"{path}: {name} has unsupported dtype id {dtype}")
        arr = np.frombuffer(
            data,
            dtype=_DTYPES[dtype],
            count=nbytes // np.dtype(_DTYPES[dtype]).itemsize,
            offset=pos,
        )
        out[name] = arr.reshape(shape)
        pos += nbytes
    for _ in range(take("I")):
        alias, target = text(), text()
        out[alias] = out[target]
    if pos != len(data):
        raise ModelError(f"{path}: {len(data) - pos} trailing bytes")
    return spec, out


@dataclass(frozen=True, slots=True)
class WhisperDims:
    n_mels: int
    d_model: int
    n_heads: int
    enc_layers: int
    dec_layers: int
    vocab: int
    max_audio_ctx: int
    max_text_ctx: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def dims_of(w: dict[str, Array]) -> WhisperDims:
    def count(prefix: str) -> int:
        parts = {k.split("/")[1] for k in w if k.startswith(prefix + "/layer_")}
        return sum(1 for part in parts if part.removeprefix("layer_").isdigit())

    return WhisperDims(
        n_mels=int(w["encoder/conv1/weight"].shape[1]),
        d_model=int(w["encoder/conv1/weight"].shape[0]),
        n_heads=int(w["encoder/num_heads"]),
        enc_layers=count("encoder"),
        dec_layers=count("decoder"),
        vocab=int(w["decoder/embeddings/weight"].shape[0]),
        max_audio_ctx=int(w["encoder/position_encodings/encodings"].shape[0]),
        max_text_ctx=int(w["decoder/position_encodings/encodings"].shape[0]),
    )


class _Graph:
    """A tiny builder: named initializers from float16 weights and auto-named nodes."""

    def __init__(self, w: dict[str, Array]) -> None:
        self.w = w
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self._n = 0

    def weight(self, name: str, *, transpose: bool = False) -> str:
        key = name + (".T" if transpose else "")
        if key not in self.inits:
            arr = np.asarray(self.w[name], dtype=np.float32)
            if transpose:
                arr = np.ascontiguousarray(arr.T)
            self.inits[key] = numpy_helper.from_array(arr, key)
        return key

    def const(self, value: Array | list[int] | float, dtype: type = np.int64) -> str:
        self._n += 1
        name = f"c{self._n}"
        self.inits[name] = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return name

    def op(
        self, op: str, *inputs: str, out: str | None = None, node: str = "", **attrs: Any
    ) -> str:
        self._n += 1
        name = out or f"{op.lower()}{self._n}"
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=node, **attrs))
        return name

    def linear(self, x: str, prefix: str, rows: slice | None = None) -> str:
        weight, bias = self.w[prefix + "/weight"], self.w[prefix + "/bias"]
        if rows is None:
            wt, b = self.weight(prefix + "/weight", transpose=True), self.weight(prefix + "/bias")
        else:
            key = f"{prefix}[{rows.start}:{rows.stop}]"
            if key + "/weight" not in self.w:
                self.w[key + "/weight"] = weight[rows]
                self.w[key + "/bias"] = bias[rows]
            wt, b = self.weight(key + "/weight", transpose=True), self.weight(key + "/bias")
        return self.op("Add", self.op("MatMul", x, wt), b)

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op(
            "LayerNormalization",
            x,
            self.weight(prefix + "/gamma"),
            self.weight(prefix + "/beta"),
            axis=-1,
            epsilon=1e-5,
        )

    def gelu(self, x: str) -> str:
        """x * (1 + erf(x / sqrt 2)) / 2, in the form ONNX Runtime fuses into one Gelu kernel
        (with x * (1 / sqrt 2) it runs five: 8 % of Whisper base's encoder, the same output)."""
        inner = self.op("Erf", self.op("Div", x, self.const(np.sqrt(2), np.float32)))
        one = self.op("Add", inner, self.const(1.0, np.float32))
        return self.op("Mul", self.op("Mul", x, one), self.const(0.5, np.float32))

    def heads(self, x: str, d: WhisperDims, perm: list[int]) -> str:
        """[B, T, D] -> [B, H, T, dh] (perm [0, 2, 1, 3]) or [B, H, dh, T] ([0, 2, 3, 1])."""
        shaped = self.op("Reshape", x, self.const([0, 0, d.n_heads, d.head_dim]))
        return self.op("Transpose", shaped, perm=perm)

    def merge_heads(self, x: str, d: WhisperDims) -> str:
        t = self.op("Transpose", x, perm=[0, 2, 1, 3])
        return self.op("Reshape", t, self.const([0, 0, d.d_model]))

    def attend(self, q: str, kt: str, v: str, d: WhisperDims, mask: str | None = None) -> str:
        scores = self.op("Mul", self.op("MatMul", q, kt), self.const(d.head_dim**-0.5, np.float32))
        if mask is not None:
            scores = self.op("Add", scores, mask)
        return self.op("MatMul", self.op("Softmax", scores, axis=-1), v)

    def stack(self, items: list[str], out: str) -> str:
        return self.op(
            "Concat", *[self.op("Unsqueeze", x, self.const([0])) for x in items], out=out, axis=0
        )

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, list(self.inits.values()))
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        m.producer_name = "tidegate"
        return m


def _ffn(g: _Graph, x: str, prefix: str) -> str:
    h = g.layer_norm(x, prefix + "/ffn/layer_norm")
    h = g.linear(g.gelu(g.linear(h, prefix + "/ffn/linear_0")), prefix + "/ffn/linear_1")
    return g.op("Add", x, h)


def build_encoder(w: dict[str, Array]) -> onnx.ModelProto:
    d = dims_of(w)
    g = _Graph(w)
    D = d.d_model
    x = g.op(
        "Conv",
        "mel",
        g.weight("encoder/conv1/weight"),
        g.weight("encoder/conv1/bias"),
        pads=[1, 1],
        kernel_shape=[3],
    )
    x = g.gelu(x)
    x = g.op(
        "Conv",
        x,
        g.weight("encoder/conv2/weight"),
        g.weight("encoder/conv2/bias"),
        pads=[1, 1],
        kernel_shape=[3],
        strides=[2],
    )
    x = g.op("Transpose", g.gelu(x), perm=[0, 2, 1])  # [B, T, D]
    frames = g.op("Slice", g.op("Shape", x), g.const([1]), g.const([2]))
    pos = g.op(
        "Slice",
        g.weight("encoder/position_encodings/encodings"),
        g.const([0]),
        frames,
        g.const([0]),
    )
    x = g.op("Add", x, pos)
    for i in range(d.enc_layers):
        p = f"encoder/layer_{i}"
        h = g.layer_norm(x, p + "/self_attention/layer_norm")
        lin = p + "/self_attention/linear_0"
        q = g.heads(g.linear(h, lin, slice(0, D)), d, [0, 2, 1, 3])
        kt = g.heads(g.linear(h, lin, slice(D, 2 * D)), d, [0, 2, 3, 1])
        v = g.heads(g.linear(h, lin, slice(2 * D, 3 * D)), d, [0, 2, 1, 3])
        a = g.linear(g.merge_heads(g.attend(q, kt, v, d), d), p + "/self_attention/linear_1")
        x = _ffn(g, g.op("Add", x, a), p)
    x = g.layer_norm(x, "encoder/layer_norm")
    ks, vs = [], []
    for i in range(d.dec_layers):
        lin = f"decoder/layer_{i}/attention/linear_1"
        ks.append(g.heads(g.linear(x, lin, slice(0, D)), d, [0, 2, 3, 1]))
        vs.append(g.heads(g.linear(x, lin, slice(D, 2 * D)), d, [0, 2, 1, 3]))
    g.stack(ks, "cross_k")
    g.stack(vs, "cross_v")
    L, H, dh = d.dec_layers, d.n_heads, d.head_dim
    f = TensorProto.FLOAT
    return g.model(
        "whisper_encoder",
        [helper.make_tensor_value_info("mel", f, ["batch", d.n_mels, "mel_frames"])],
        [
            helper.make_tensor_value_info("cross_k", f, [L, "batch", H, dh, "audio_ctx"]),
            helper.make_tensor_value_info("cross_v", f, [L, "batch", H, "audio_ctx", dh]),
        ],
    )


def build_decoder(w: dict[str, Array]) -> onnx.ModelProto:
    d = dims_of(w)
    g = _Graph(w)
    D = d.d_model
    past_len = g.op("Slice", g.op("Shape", "past_k"), g.const([3]), g.const([4]))
    new_len = g.op("Slice", g.op("Shape", "tokens"), g.const([1]), g.const([2]))
    total = g.op("Add", past_len, new_len)
    pos = g.op(
        "Slice", g.weight("decoder/position_encodings/encodings"), past_len, total, g.const([0])
    )
    x = g.op("Add", g.op("Gather", g.weight("decoder/embeddings/weight"), "tokens", axis=0), pos)
    # Causal mask [S, P+S]: key j is visible to new token i when j <= P + i.
    zero, one = g.const(0), g.const(1)
    rows = g.op(
        "Add",
        g.op("Range", zero, g.op("Squeeze", new_len, g.const([0])), one),
        g.op("Squeeze", past_len, g.const([0])),
    )
    cols = g.op("Range", zero, g.op("Squeeze", total, g.const([0])), one)
    hidden = g.op(
        "Greater", g.op("Unsqueeze", cols, g.const([0])), g.op("Unsqueeze", rows, g.const([1]))
    )
    mask = g.op("Where", hidden, g.const(-1e9, np.float32), g.const(0.0, np.float32))
    pk: list[str] = []
    pv: list[str] = []
    for i in range(d.dec_layers):
        p = f"decoder/layer_{i}"
        li = g.const([i])
        h = g.layer_norm(x, p + "/self_attention/layer_norm")
        lin = p + "/self_attention/linear_0"
        q = g.heads(g.linear(h, lin, slice(0, D)), d, [0, 2, 1, 3])
        k = g.heads(g.linear(h, lin, slice(D, 2 * D)), d, [0, 2, 1, 3])
        v = g.heads(g.linear(h, lin, slice(2 * D, 3 * D)), d, [0, 2, 1, 3])
        k = g.op(
            "Concat", g.op("Squeeze", g.op("Gather", "past_k", li, axis=0), g.const([0])), k, axis=2
        )
        v = g.op(
            "Concat", g.op("Squeeze", g.op("Gather", "past_v", li, axis=0), g.const([0])), v, axis=2
        )
        pk.append(k)
        pv.append(v)
        a = g.attend(q, g.op("Transpose", k, perm=[0, 1, 3, 2]), v, d, mask)
        x = g.op("Add", x, g.linear(g.merge_heads(a, d), p + "/self_attention/linear_1"))
        h = g.layer_norm(x, p + "/attention/layer_norm")
        q = g.heads(g.linear(h, p + "/attention/linear_0"), d, [0, 2, 1, 3])
        a = g.attend(q, f"cross_k_{i}", f"cross_v_{i}", d)
        x = g.op("Add", x, g.linear(g.merge_heads(a, d), p + "/attention/linear_2"))
        x = _ffn(g, x, p)
    x = g.layer_norm(x, "decoder/layer_norm")
    g.op(
        "MatMul",
        x,
        g.weight("decoder/embeddings/weight", transpose=True),
        out="logits",
        node=OUTPUT_PROJECTION,
    )
    g.stack(pk, "present_k")
    g.stack(pv, "present_v")
    L, H, dh = d.dec_layers, d.n_heads, d.head_dim
    f = TensorProto.FLOAT
    return g.model(
        "whisper_decoder",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "new"]),
            helper.make_tensor_value_info("past_k", f, [L, "batch", H, "past", dh]),
            helper.make_tensor_value_info("past_v", f, [L, "batch", H, "past", dh]),
            *(
                helper.make_tensor_value_info(f"cross_k_{i}", f, ["batch", H, dh, "audio_ctx"])
                for i in range(L)
            ),
            *(
                helper.make_tensor_value_info(f"cross_v_{i}", f, ["batch", H, "audio_ctx", dh])
                for i in range(L)
            ),
        ],
        [
            helper.make_tensor_value_info("logits", f, ["batch", "new", d.vocab]),
            helper.make_tensor_value_info("present_k", f, [L, "batch", H, "total", dh]),
            helper.make_tensor_value_info("present_v", f, [L, "batch", H, "total", dh]),
        ],
    )


def convert(
    model_bin: Path,
    out_dir: Path,
    *,
    precision: str = "int8",
    per_channel: bool = False,
    decoder: str = OUTPUT_PROJECTION,
    graph: int = GRAPH_VERSION,
) -> WhisperDims:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``conversion.json`` for the Whisper
    ``model.bin``; ``precision`` is ``int8`` (see the module docstring) or ``fp32``.
    ``per_channel`` quantises each weight column on its own range instead of one range per
    tensor: for Whisper base it keeps the float32 model's language detection (7 of 12 espeak
    clips, per tensor 5) and WER at the same CPU (docs/asr.md); tiny.en keeps per tensor.
    ``decoder`` (int8 only): the decoder MatMuls made int8, ``output_projection`` or ``all``
    (Whisper base: 21-25 % less CPU per stream, WER as good, docs/languages.md). ``graph``:
    the graphs' version the caller expects (:data:`GRAPH_VERSION`, the only one built)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if decoder not in DECODER_INT8:
        raise ValueError(f"decoder must be one of {DECODER_INT8}, got {decoder!r}")
    if graph != GRAPH_VERSION:
        raise ValueError(f"this converter builds graphs version {GRAPH_VERSION}, not {graph}")
    spec, w = read_ct2(model_bin)
    if spec != "WhisperSpec":
        raise ModelError(f"{model_bin}: a {spec}, expected a WhisperSpec")
    weights = dict(w)
    quantized: dict[str, list[str] | None] = {
        "encoder.onnx": None,  # None: every MatMul with a constant weight
        "decoder.onnx": None if decoder == "all" else [OUTPUT_PROJECTION],
    }
    for name, build in (("encoder.onnx", build_encoder), ("decoder.onnx", build_decoder)):
        model = build(weights)
        onnx.checker.check_model(model)
        tmp = out_dir / (name + ".part")
        onnx.save(model, str(tmp))
        del model
        if precision == "int8":
            _quantize(tmp, out_dir / name, quantized[name], per_channel=per_channel)
            tmp.unlink()
        else:
            tmp.replace(out_dir / name)
    record = {
        "precision": precision,
        "per_channel": per_channel,
        "int8_matmuls": (
            {k: v if v is not None else "all" for k, v in quantized.items()}
            if precision == "int8"
            else {}
        ),
    }
    (out_dir / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return dims_of(w)


def _quantize(src: Path, dst: Path, nodes: list[str] | None, *, per_channel: bool = False) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_suffix(".qpart")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing on the root logger
    try:
        quantize_dynamic(
            src,
            tmp,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            reduce_range=True,
            per_channel=per_channel,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)
    tmp.replace(dst)
