"""GGUF -> ONNX: a llama-architecture decoder with a KV cache, built node by node with
``onnx.helper`` from the tensors the ``gguf`` package reads and dequantises (no torch), then
quantised to int8 with ``onnxruntime.quantization.quantize_dynamic`` (MatMul weights); plus
the tokenizer (rebuilt from the GGUF vocabulary and merges with ``tokenizers``) and a config.

The graph serves a batch of sequences of different lengths in one step:

- ``input_ids`` int64 [batch, seq] and ``position_ids`` int64 [batch, seq]: each sequence has
  its own positions (RoPE is computed in the graph from them);
- ``attention_bias`` float32 [batch, seq, past + seq]: 0 where a query may attend, a large
  negative number elsewhere. The caller builds it: causal within the new tokens, and masking
  the padded (unused) slots of the shared KV cache;
- ``past_key.N`` / ``past_value.N`` float32 [batch, kv_heads, past, head_dim] per layer;
- outputs ``logits`` float32 [batch, vocab] of each sequence's last new token, and
  ``present_key.N`` / ``present_value.N`` = past with the new tokens appended.

Grouped-query attention does not repeat the KV heads: the 9 query heads are reshaped into 3
groups of 3 that each attend to their own KV head in one MatMul.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.engines.llm.config import LlamaConfig

Progress = Callable[[str], None]

OPSET = 18
PRECISIONS = ("int8", "fp32")


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        raise KeyError(f"GGUF metadata has no {key}")
    return f.contents()


def read_config(reader: Any) -> LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"only the llama architecture is supported, the file is {arch!r}")
    return LlamaConfig(
        layers=int(_field(reader, "llama.block_count")),
        width=int(_field(reader, "llama.embedding_length")),
        ffn_width=int(_field(reader, "llama.feed_forward_length")),
        heads=int(_field(reader, "llama.attention.head_count")),
        kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
        vocab=len(reader.fields["tokenizer.ggml.tokens"].data),
        rope_base=float(_field(reader, "llama.rope.freq_base")),
        rms_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        context_tokens=int(_field(reader, "llama.context_length")),
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        chat_template=str(_field(reader, "tokenizer.chat_template")),
    )


def _unpermute_rows(w: np.ndarray[Any, Any], heads: int) -> np.ndarray[Any, Any]:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> rotate-half halves)."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def read_tensors(reader: Any) -> dict[str, np.ndarray[Any, Any]]:
    """Every tensor dequantised to float32, in numpy (rows = output features) order."""
    from gguf.quants import dequantize

    out: dict[str, np.ndarray[Any, Any]] = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = np.ascontiguousarray(arr.reshape(shape), dtype=np.float32)
    return out


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray[Any, Any]) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        self._n += 1
        outs = [f"{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def named(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output


def build_graph(cfg: LlamaConfig, weights: dict[str, np.ndarray[Any, Any]]) -> Any:
    """The float32 ONNX model (a ``ModelProto``) of ``cfg`` with ``weights``."""
    from onnx import TensorProto, helper

    b = _Builder()
    hd, h, kvh = cfg.head_dim, cfg.heads, cfg.kv_heads
    group = h // kvh
    i64 = np.int64

    def vec(name: str, values: list[int]) -> str:
        return b.const(name, np.array(values, dtype=i64))

    c_axes_last = vec("axes_last", [-1])
    c_axes_1 = vec("axes_1", [1])
    c_axes_12 = vec("axes_12", [1, 2])
    c_eps = b.const("rms_eps", np.array(cfg.rms_eps, dtype=np.float32))
    c_shape_q = vec("shape_q", [0, 0, h, hd])
    c_shape_kv = vec("shape_kv", [0, 0, kvh, hd])
    c_shape_heads = vec("shape_heads", [0, h, -1, hd])
    c_shape_merge = vec("shape_merge", [0, 0, cfg.width])
    c_half = vec("half", [hd // 2, hd // 2])
    c_scale = b.const("attn_scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))
    c_last = b.const("last_index", np.array(-1, dtype=i64))

    def rms_norm(x: str, weight: str) -> str:
        sq = b.op("Mul", [x, x])
        mean = b.op("ReduceMean", [sq, c_axes_last], keepdims=1)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [mean, c_eps])])])
        return b.op("Mul", [b.op("Mul", [x, inv]), weight])

    def linear(x: str, name: str, w: np.ndarray[Any, Any]) -> str:
        return b.op("MatMul", [x, b.const(name, np.ascontiguousarray(w.T))])

    # RoPE tables from the positions: [batch, 1, seq, head_dim].
    inv_freq = 1.0 / (cfg.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    c_inv = b.const("rope_inv_freq", inv_freq.astype(np.float32))
    pos = b.op("Unsqueeze", [b.op("Cast", ["position_ids"], to=TensorProto.FLOAT), c_axes_last])
    freqs = b.op("Mul", [pos, c_inv])
    emb = b.op("Concat", [freqs, freqs], axis=-1)
    cos = b.op("Unsqueeze", [b.op("Cos", [emb]), c_axes_1])
    sin = b.op("Unsqueeze", [b.op("Sin", [emb]), c_axes_1])

    def rope(x: str) -> str:  # x: [batch, heads, seq, head_dim]
        x1, x2 = b.op("Split", [x, c_half], n_out=2, axis=-1)
        rot = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)
        return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rot, sin])])

    # The additive mask, broadcast over heads: [batch, 1, 1, seq, total].
    bias = b.op("Unsqueeze", ["attention_bias", c_axes_12])

    embed = weights["token_embd.weight"]
    x = b.op("Gather", [b.const("token_embd", embed), "input_ids"], axis=0)
    present: list[str] = []
    for n in range(cfg.layers):
        p = f"blk.{n}."
        attn_in = rms_norm(x, b.const(f"l{n}.attn_norm", weights[p + "attn_norm.weight"]))
        wq = _unpermute_rows(weights[p + "attn_q.weight"], h)
        wk = _unpermute_rows(weights[p + "attn_k.weight"], kvh)
        q = linear(attn_in, f"l{n}.wq", wq)
        k = linear(attn_in, f"l{n}.wk", wk)
        v = linear(attn_in, f"l{n}.wv", weights[p + "attn_v.weight"])
        q = b.op("Transpose", [b.op("Reshape", [q, c_shape_q])], perm=[0, 2, 1, 3])
        k = b.op("Transpose", [b.op("Reshape", [k, c_shape_kv])], perm=[0, 2, 1, 3])
        v = b.op("Transpose", [b.op("Reshape", [v, c_shape_kv])], perm=[0, 2, 1, 3])
        q, k = rope(q), rope(k)
        k_all = b.named("Concat", [f"past_key.{n}", k], f"present_key.{n}", axis=2)
        v_all = b.named("Concat", [f"past_value.{n}", v], f"present_value.{n}", axis=2)
        present += [k_all, v_all]
        # [b, h, s, d] -> [b, kvh, group*s, d]: each group of query heads shares one KV head.
        qg = b.op("Reshape", [q, vec(f"l{n}.shape_qg", [0, kvh, -1, hd])])
        scores = b.op("MatMul", [qg, b.op("Transpose", [k_all], perm=[0, 1, 3, 2])])
        scores = b.op("Mul", [scores, c_scale])
        # [b, kvh, group*s, t] -> [b, kvh, group, s, t] to add the per-sequence mask.
        t_shape = b.op("Shape", [k_all], start=2, end=3)
        g_shape = b.op("Concat", [vec(f"l{n}.shape_g0", [0, kvh, group, -1]), t_shape], axis=0)
        scores = b.op("Add", [b.op("Reshape", [scores, g_shape]), bias])
        probs = b.op("Softmax", [scores], axis=-1)
        s_shape = b.op("Concat", [vec(f"l{n}.shape_s0", [0, kvh, -1]), t_shape], axis=0)
        ctx = b.op("MatMul", [b.op("Reshape", [probs, s_shape]), v_all])
        ctx = b.op("Reshape", [ctx, c_shape_heads])
        ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), c_shape_merge])
        x = b.op("Add", [x, linear(ctx, f"l{n}.wo", weights[p + "attn_output.weight"])])
        ffn_in = rms_norm(x, b.const(f"l{n}.ffn_norm", weights[p + "ffn_norm.weight"]))
        gate = linear(ffn_in, f"l{n}.w_gate", weights[p + "ffn_gate.weight"])
        up = linear(ffn_in, f"l{n}.w_up", weights[p + "ffn_up.weight"])
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
        x = b.op("Add", [x, linear(act, f"l{n}.w_down", weights[p + "ffn_down.weight"])])
    last = b.op("Gather", [x, c_last], axis=1)  # [batch, width]: the last new token only
    last = rms_norm(last, b.const("output_norm", weights["output_norm.weight"]))
    head = weights.get("output.weight", embed)  # tied embeddings unless the file has a head
    b.named("MatMul", [last, b.const("lm_head", np.ascontiguousarray(head.T))], "logits")

    f32, i64t = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64t, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", i64t, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_bias", f32, ["batch", "seq", "total"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", cfg.vocab])]
    for n in range(cfg.layers):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(f"past_{kind}.{n}", f32, ["batch", kvh, "past", hd])
            )
            outputs.append(
                helper.make_tensor_value_info(
                    f"present_{kind}.{n}", f32, ["batch", kvh, "total", hd]
                )
            )
    graph = helper.make_graph(b.nodes, "llama", inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def build_tokenizer(reader: Any) -> Any:
    """A ``tokenizers.Tokenizer`` from the GGUF vocabulary, merges and token types (GPT-2
    byte-level BPE, digits split one by one as SmolLM's pre-tokenizer does)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
    types = [int(t) for t in _field(reader, "tokenizer.ggml.token_type")]
    pairs = [str(m).split(" ", 1) for m in _field(reader, "tokenizer.ggml.merges")]
    merges = [(a, b) for a, b in pairs]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    control = [
        AddedToken(t, special=True, normalized=False)
        for t, k in zip(tokens, types, strict=True)
        if k == 3
    ]
    tok.add_special_tokens(control)
    return tok


def convert(gguf_path: Path, out_dir: Path, progress: Progress, *, precision: str = "int8") -> None:
    """Write ``model.onnx``, ``tokenizer.json`` and ``config.json`` into ``out_dir``.

    ``int8``: MatMul weights quantised by ``quantize_dynamic`` (activations are quantised per
    tensor at run time, so a row's result depends slightly on the other rows of its batch);
    ``fp32``: exact float weights (a row's result does not depend on its batch)."""
    import onnx
    from gguf import GGUFReader

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    reader = GGUFReader(str(gguf_path))
    cfg = read_config(reader)
    progress(f"  read {gguf_path.name}: {cfg.layers} layers, width {cfg.width}")
    build_tokenizer(reader).save(str(out_dir / "tokenizer.json"))
    (out_dir / "config.json").write_text(cfg.to_json())
    weights = read_tensors(reader)
    progress(f"  dequantised {len(weights)} tensors; building the ONNX graph")
    model = build_graph(cfg, weights)
    del weights
    if precision == "fp32":
        onnx.save(model, str(out_dir / "model.onnx"))
        return
    fp32 = out_dir / "model.fp32.onnx"
    onnx.save(model, str(fp32), save_as_external_data=True, location="model.fp32.onnx.data")
    del model
    progress("  quantising MatMul weights to int8 (quantize_dynamic)")
    _quantize(fp32, out_dir / "model.onnx")
    fp32.unlink()
    (out_dir / "model.fp32.onnx.data").unlink()


def _quantize(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_suffix(".part.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing on the root logger
    try:
        # Weights only (MatMulConstBOnly: the attention products stay float); 7-bit ranges
        # (reduce_range) because AVX2's u8*s8 multiply-add saturates and garbles the output.
        quantize_dynamic(
            src,
            tmp,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            reduce_range=True,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)
    tmp.replace(dst)
