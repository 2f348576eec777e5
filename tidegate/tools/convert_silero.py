"""Silero VAD v5 (the shipped ONNX file) -> a graph whose front end is batch-wide matrix
products, for many sessions in one call on ONNX Runtime (and TensorRT).

The shipped graph runs its STFT and its four encoder layers as 1-D ``Conv`` ops. ONNX
Runtime runs those image by image: a batch of 64 sessions is 64 small GEMMs (N = 4 frames
each) per layer, so a batch barely amortises them. Here the same arithmetic is written as
``Gather`` (the frames' windows, or the convolution's taps, picked out by constant indices)
then ONE ``MatMul`` over batch x frames per layer, in a time-major, channels-last layout:

- STFT: the 576 input samples and their right-hand reflection (64, a reversed ``Slice``)
  are cut into five blocks of one hop (128); each of the 4 windows of 256 is two consecutive
  blocks (``Gather`` of whole rows), times the basis [256, 258]; magnitude
  ``sqrt(re^2 + im^2)`` of its two halves.
- encoder 0 and 1 (kernel 3, padding 1, strides 1 and 2): zero-pad the time axis, gather each
  output frame's three input frames, reshape to [B, T', 3C] and multiply by the weight laid
  out [3C, C']; bias, ReLU.
- encoder 2 and 3 produce one frame: the taps that fall on the zero padding are dropped, so
  each is a reshape and a ``MatMul`` by the remaining taps' weights.
- decoder: the shipped ``LSTM`` (PyTorch's gate order i, f, g, o reordered to ONNX's
  i, o, f, c, as the shipped graph's Slice/Concat does), ReLU, the 1x1 convolution as a
  ``MatMul``, sigmoid.

Only the 16 kHz branch is kept: there is no ``sr`` input (inputs ``input`` [B, 576] and
``state`` [2, B, 128]; outputs ``output`` [B, 1] and ``stateN`` [2, B, 128]). The output
equals the shipped model's within float rounding (:func:`compare`; prepare fails above
:data:`TOLERANCE`), and the file is the same bytes on every run: fixed names, no
timestamps, weights taken as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tidegate.engines.errors import ModelError
from tidegate.engines.runtime import Array

OPSET = 16
SAMPLE_RATE_HZ = 16_000
CONTEXT_SAMPLES = 64
FRAME_SAMPLES = 512
INPUT_SAMPLES = CONTEXT_SAMPLES + FRAME_SAMPLES
HIDDEN = 128
#: the most one step may differ from the shipped model for prepare to accept the graph: the
#: probability (absolute) and the new state (relative, see :func:`compare`). The state's bound
#: is looser: on a silent frame from a zero state the shipped model's cell state is 1.6e-5
#: off a float64 recomputation of its own LSTM (this graph's: 1.2e-7), so the two differ by
#: that much whichever is nearer the true value.
TOLERANCE = 1e-5
STATE_TOLERANCE = 1e-4

_WEIGHTS = (
    "stft.forward_basis_buffer",
    "encoder.0.reparam_conv.weight",
    "encoder.0.reparam_conv.bias",
    "encoder.1.reparam_conv.weight",
    "encoder.1.reparam_conv.bias",
    "encoder.2.reparam_conv.weight",
    "encoder.2.reparam_conv.bias",
    "encoder.3.reparam_conv.weight",
    "encoder.3.reparam_conv.bias",
    "decoder.rnn.weight_ih",
    "decoder.rnn.weight_hh",
    "decoder.rnn.bias_ih",
    "decoder.rnn.bias_hh",
    "decoder.decoder.2.weight",
    "decoder.decoder.2.bias",
)


def _branch_16k(model: onnx.ModelProto) -> onnx.GraphProto:
    """The subgraph the shipped model runs when ``sr == 16000``."""
    nodes = list(model.graph.node)
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    for n in nodes:
        if n.op_type != "Equal" or "sr" not in n.input:
            continue
        other = n.input[1] if n.input[0] == "sr" else n.input[0]
        rate = consts.get(other)
        for m in nodes:
            if m.op_type == "If" and m.input[0] == n.output[0] and rate is not None:
                branch = "then_branch" if int(rate) == SAMPLE_RATE_HZ else "else_branch"
                for a in m.attribute:
                    if a.name == branch:
                        return a.g
    raise ModelError("silero: no If on sr == 16000 in the model (not Silero VAD v5?)")


def _weights(branch: onnx.GraphProto) -> dict[str, Array]:
    found: dict[str, Array] = {}
    for n in branch.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            for w in _WEIGHTS:
                if n.output[0].endswith("__" + w) or n.output[0] == w:
                    found[w] = numpy_helper.to_array(n.attribute[0].t)
    missing = [w for w in _WEIGHTS if w not in found]
    if missing:
        raise ModelError(f"silero: the 16 kHz branch lacks {missing} (not Silero VAD v5?)")
    return found


def _conv_attrs(branch: onnx.GraphProto) -> list[dict[str, Any]]:
    """The attributes of the branch's Conv nodes, in graph order."""
    return [
        {a.name: helper.get_attribute_value(a) for a in n.attribute}
        for n in branch.node
        if n.op_type == "Conv"
    ]


def _check_layout(branch: onnx.GraphProto, w: Mapping[str, Array]) -> list[int]:
    """The shapes and Conv attributes this rewrite assumes; the encoder strides."""
    convs = _conv_attrs(branch)
    if len(convs) != 6:
        raise ModelError(f"silero: {len(convs)} Conv nodes in the 16 kHz branch, expected 6")
    stft, *encoder, _head = convs
    if list(stft["kernel_shape"]) != [256] or list(stft["strides"]) != [128]:
        raise ModelError(f"silero: STFT conv {stft}, expected kernel 256, stride 128")
    if w["stft.forward_basis_buffer"].shape != (258, 1, 256):
        raise ModelError("silero: STFT basis is not [258, 1, 256]")
    pads = [n for n in branch.node if n.op_type == "Pad"]
    if len(pads) != 1 or helper.get_attribute_value(pads[0].attribute[0]) != b"reflect":
        raise ModelError("silero: expected one reflect Pad before the STFT")
    strides = []
    for i, attrs in enumerate(encoder):
        if list(attrs["kernel_shape"]) != [3] or list(attrs["pads"]) != [1, 1]:
            raise ModelError(f"silero: encoder.{i} conv {attrs}, expected kernel 3, padding 1")
        strides.append(int(attrs["strides"][0]))
    if w["decoder.rnn.weight_ih"].shape != (4 * HIDDEN, HIDDEN):
        raise ModelError("silero: LSTM weights are not [512, 128]")
    return strides


class _Graph:
    """Nodes and initializers under fixed names (the file's bytes depend only on the weights)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: Array) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output


#: the STFT: window, hop and the reflection padding on the right of the input
STFT_WINDOW, STFT_HOP, STFT_PAD = 256, 128, 64
STFT_FRAMES = (INPUT_SAMPLES + STFT_PAD - STFT_WINDOW) // STFT_HOP + 1  # 4


def _stft_windows(g: _Graph) -> str:
    """input [B, 576] -> the STFT's windows [B, 4, 256]: the input and its reflection
    (``padded[576 + j] = input[574 - j]``) cut into blocks of one hop, and each window
    gathered as two consecutive blocks (a Gather of whole 128-sample rows, not of samples)."""
    last = INPUT_SAMPLES - 1
    tail = g.op(
        "Slice",
        [
            "input",
            g.const("stft.reflect_start", np.array([last - 1], np.int64)),
            g.const("stft.reflect_end", np.array([last - 1 - STFT_PAD], np.int64)),
            g.const("stft.reflect_axis", np.array([1], np.int64)),
            g.const("stft.reflect_step", np.array([-1], np.int64)),
        ],
        "stft.reflection",
    )
    padded = g.op("Concat", ["input", tail], "stft.padded", axis=1)
    blocks_n = (INPUT_SAMPLES + STFT_PAD) // STFT_HOP
    shape = np.array([0, blocks_n, STFT_HOP], np.int64)
    blocks = g.op("Reshape", [padded, g.const("stft.blocks_shape", shape)], "stft.blocks")
    per_window = STFT_WINDOW // STFT_HOP
    idx = np.arange(STFT_FRAMES)[:, None] + np.arange(per_window)[None, :]
    pairs = g.op(
        "Gather", [blocks, g.const("stft.windows", idx.astype(np.int64))], "stft.pairs", axis=1
    )  # [B, 4, 2, 128]
    shape = np.array([0, STFT_FRAMES, STFT_WINDOW], np.int64)
    return g.op("Reshape", [pairs, g.const("stft.windows_shape", shape)], "stft.frames")


def _conv(
    g: _Graph, x: str, frames: int, weight: Array, bias: Array, stride: int, name: str
) -> tuple[str, int]:
    """Conv1d (kernel 3, padding 1) over x [B, frames, C] as Gather + MatMul; ReLU after.
    Returns the output [B, frames', C'] (or [B, C'] when frames' is 1) and frames'."""
    c_out, c_in, kernel = weight.shape
    out_frames = (frames + 2 - kernel) // stride + 1
    taps = weight.transpose(2, 1, 0)  # [kernel, C, C']
    if out_frames == 1:
        # Only the taps on real frames count (the others multiply the zero padding).
        used = [k for k in range(kernel) if 0 <= k - 1 < frames]
        if [k - 1 for k in used] != list(range(frames)):
            raise ModelError(f"silero: {name} does not cover its input frames")
        w = taps[used].reshape(len(used) * c_in, c_out)
        flat = g.op(
            "Reshape", [x, g.const(f"{name}.flat_shape", np.array([0, -1], np.int64))], f"{name}.in"
        )
    else:
        padded = g.op(
            "Pad",
            [x, g.const(f"{name}.pads", np.array([0, 1, 0, 0, 1, 0], np.int64))],
            f"{name}.padded",
        )
        idx = np.arange(out_frames)[:, None] * stride + np.arange(kernel)[None, :]
        gathered = g.op(
            "Gather",
            [padded, g.const(f"{name}.taps", idx.astype(np.int64))],
            f"{name}.taps_of",
            axis=1,
        )  # [B, frames', kernel, C]
        shape = np.array([0, out_frames, kernel * c_in], np.int64)
        flat = g.op("Reshape", [gathered, g.const(f"{name}.im2col_shape", shape)], f"{name}.in")
        w = taps.reshape(kernel * c_in, c_out)
    y = g.op("MatMul", [flat, g.const(f"{name}.weight", w)], f"{name}.matmul")
    y = g.op("Add", [y, g.const(f"{name}.bias", bias)], f"{name}.conv")
    return g.op("Relu", [y], f"{name}.relu"), out_frames


def _lstm_gates(w: Array) -> Array:
    """PyTorch's gate order (i, f, g, o) -> ONNX's (i, o, f, c)."""
    h = HIDDEN
    return np.concatenate([w[:h], w[3 * h :], w[h : 3 * h]], axis=0)


def build(shipped: onnx.ModelProto) -> onnx.ModelProto:
    """The batched graph from the shipped Silero VAD v5 model."""
    branch = _branch_16k(shipped)
    w = _weights(branch)
    strides = _check_layout(branch, w)
    g = _Graph()

    # STFT: windows [B, 4, 256] @ basis [256, 258] -> magnitudes [B, 4, 129].
    windows = _stft_windows(g)
    basis = w["stft.forward_basis_buffer"][:, 0, :].T  # [256, 258]
    spec = g.op("MatMul", [windows, g.const("stft.basis", basis)], "stft.spectrum")
    half = basis.shape[1] // 2
    axis = g.const("stft.axis", np.array([2], np.int64))
    re = g.op(
        "Slice",
        [
            spec,
            g.const("stft.re_start", np.array([0], np.int64)),
            g.const("stft.re_end", np.array([half], np.int64)),
            axis,
        ],
        "stft.re",
    )
    im = g.op(
        "Slice",
        [
            spec,
            g.const("stft.im_start", np.array([half], np.int64)),
            g.const("stft.im_end", np.array([2 * half], np.int64)),
            axis,
        ],
        "stft.im",
    )
    power = g.op(
        "Add", [g.op("Mul", [re, re], "stft.re2"), g.op("Mul", [im, im], "stft.im2")], "stft.power"
    )
    x = g.op("Sqrt", [power], "stft.magnitude")
    frames = STFT_FRAMES

    for i, stride in enumerate(strides):
        x, frames = _conv(
            g,
            x,
            frames,
            w[f"encoder.{i}.reparam_conv.weight"],
            w[f"encoder.{i}.reparam_conv.bias"],
            stride,
            f"encoder.{i}",
        )
    if frames != 1:
        raise ModelError(f"silero: the encoder ends with {frames} frames, expected 1")

    # Decoder: one LSTM step from the session's state, ReLU, 1x1 conv, sigmoid.
    seq = g.op("Unsqueeze", [x, g.const("lstm.axis0", np.array([0], np.int64))], "lstm.x")
    g.nodes.append(
        helper.make_node(
            "Split",
            ["state", g.const("lstm.split", np.array([1, 1], np.int64))],
            ["lstm.h0", "lstm.c0"],
            name="lstm.state",
            axis=0,
        )
    )
    lstm_w = _lstm_gates(w["decoder.rnn.weight_ih"])[None]
    lstm_r = _lstm_gates(w["decoder.rnn.weight_hh"])[None]
    lstm_b = np.concatenate(
        [_lstm_gates(w["decoder.rnn.bias_ih"]), _lstm_gates(w["decoder.rnn.bias_hh"])]
    )[None]
    g.nodes.append(
        helper.make_node(
            "LSTM",
            [
                seq,
                g.const("lstm.W", lstm_w),
                g.const("lstm.R", lstm_r),
                g.const("lstm.B", lstm_b),
                "",
                "lstm.h0",
                "lstm.c0",
            ],
            ["", "lstm.h", "lstm.c"],
            name="lstm",
            hidden_size=HIDDEN,
        )
    )
    g.nodes.append(
        helper.make_node("Concat", ["lstm.h", "lstm.c"], ["stateN"], name="stateN", axis=0)
    )
    h = g.op("Squeeze", ["lstm.h", "lstm.axis0"], "decoder.h")
    h = g.op("Relu", [h], "decoder.relu")
    head = w["decoder.decoder.2.weight"][:, :, 0].T  # [128, 1]
    logit = g.op("MatMul", [h, g.const("decoder.weight", head)], "decoder.matmul")
    logit = g.op(
        "Add", [logit, g.const("decoder.bias", w["decoder.decoder.2.bias"])], "decoder.logit"
    )
    g.nodes.append(helper.make_node("Sigmoid", [logit], ["output"], name="output"))

    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes,
        "silero_vad_batched",
        [
            helper.make_tensor_value_info("input", f32, ["batch", INPUT_SAMPLES]),
            helper.make_tensor_value_info("state", f32, [2, "batch", HIDDEN]),
        ],
        [
            helper.make_tensor_value_info("output", f32, ["batch", 1]),
            helper.make_tensor_value_info("stateN", f32, [2, "batch", HIDDEN]),
        ],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    model.producer_name = "tidegate"
    model.doc_string = "Silero VAD v5, 16 kHz, front end as batch-wide MatMuls (tidegate)"
    onnx.checker.check_model(model)
    return model


def convert(src: Path, out: Path) -> None:
    """Write the batched graph of the shipped model ``src`` to ``out`` (atomically)."""
    model = build(onnx.load(str(src)))
    tmp = out.with_suffix(".part.onnx")
    tmp.write_bytes(model.SerializeToString(deterministic=True))
    tmp.replace(out)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare(shipped: Path, batched: Path, streams: Array) -> tuple[float, float]:
    """The worst difference of one step of the two models over ``streams`` [S, samples] of
    16 kHz audio, run as one batch of S sessions frame after frame: both get the same input
    and the shipped model's state each frame; the difference is max abs of the probability
    and of the new state relative to its size (``|a - b| / max(1, |a|)``: the LSTM's cell
    state grows to hundreds on long noise). Returns (probability, state) differences."""
    a, b = _session(shipped), _session(batched)
    n = streams.shape[0]
    sr = np.array(SAMPLE_RATE_HZ, np.int64)
    state = np.zeros((2, n, HIDDEN), np.float32)
    context = np.zeros((n, CONTEXT_SAMPLES), np.float32)
    worst_p = worst_s = 0.0
    for start in range(0, streams.shape[1] - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        frame = streams[:, start : start + FRAME_SAMPLES].astype(np.float32)
        x = np.concatenate([context, frame], axis=1)
        out_a, state_a = a.run(None, {"input": x, "state": state, "sr": sr})
        out_b, state_b = b.run(None, {"input": x, "state": state})
        rel = np.abs(state_a - state_b) / np.maximum(1.0, np.abs(state_a))
        worst_p = max(worst_p, float(np.abs(out_a - out_b).max()))
        worst_s = max(worst_s, float(rel.max()))
        state, context = state_a, x[:, -CONTEXT_SAMPLES:]
    return worst_p, worst_s


def check_audio(seconds: float = 3.0, seed: int = 0) -> Array:
    """What prepare compares on: white noise at three levels, a voiced-like signal
    (harmonics of a gliding pitch, switched on and off) with and without noise, a clipped
    full-scale signal and silence [7, samples]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ
    k = np.arange(1, 8)[:, None]
    voiced = (np.sin(k * phase) / k).sum(axis=0) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    noise = rng.standard_normal((3, t.size))
    rows = [
        0.01 * noise[0],
        0.1 * noise[1],
        np.clip(noise[2], -1, 1),
        0.3 * voiced,
        0.3 * voiced + 0.02 * noise[0],
        np.clip(2.0 * voiced, -1, 1),
        np.zeros_like(t),
    ]
    return np.stack(rows).astype(np.float32)


def convert_checked(src: Path, out: Path, streams: Array | None = None) -> tuple[float, float]:
    """:func:`convert`, then :func:`compare` on ``streams`` (default :func:`check_audio`);
    :class:`ModelError` (and no ``out``) when a difference exceeds its tolerance."""
    convert(src, out)
    prob, state = compare(src, out, check_audio() if streams is None else streams)
    if not (prob <= TOLERANCE and state <= STATE_TOLERANCE):
        out.unlink()
        raise ModelError(
            f"silero: the batched graph differs from the shipped model by {prob:.3g} in "
            f"probability and {state:.3g} in state (at most {TOLERANCE:g} and "
            f"{STATE_TOLERANCE:g}); not written"
        )
    return prob, state
