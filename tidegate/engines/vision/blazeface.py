"""BlazeFace short range (MediaPipe, converted to ONNX at preparation time), batched.

Each frame is letterboxed to 128x128 (aspect kept, black borders), scaled to [-1, 1] and
stacked NCHW. The model gives 896 anchor regressions (box and 6 keypoints) and scores;
anchors, sigmoid scores and MediaPipe's weighted non-maximum suppression are decoded here
in numpy, and boxes are mapped back to the frame's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, Ok, Outcome
from ..errors import EngineError
from ..runtime import Array, ModelRunner, RuntimeOptions, open_model
from ..signature import Signature, TensorSpec
from .faces import FRAME_SIGNATURE, Detection, FaceDetections, check_frame
from .imaging import resize, weighted_nms

INPUT_PX = 128
NUM_ANCHORS = 896
NUM_KEYPOINTS = 6

MODEL_SIGNATURE = Signature(
    inputs=(TensorSpec("input", "float32", ("batch", 3, INPUT_PX, INPUT_PX)),),
    outputs=(
        TensorSpec("regressors", "float32", ("batch", NUM_ANCHORS, 16)),
        TensorSpec("classificators", "float32", ("batch", NUM_ANCHORS, 1)),
    ),
)


def anchors() -> Array:
    """SSD anchor centres [896, 2] of the short-range model (MediaPipe's options: 4 layers,
    strides 8, 16, 16, 16, two anchors per layer, fixed size): a 16x16 grid with 2 anchors
    per cell, then an 8x8 grid with 6."""
    out = []
    for grid, per_cell in ((16, 2), (8, 6)):
        c = (np.arange(grid, dtype=np.float32) + 0.5) / grid
        yy, xx = np.meshgrid(c, c, indexing="ij")
        centres = np.stack([xx.ravel(), yy.ravel()], axis=1)
        out.append(np.repeat(centres, per_cell, axis=0))
    result: Array = np.concatenate(out)
    return result


@dataclass(frozen=True, slots=True)
class _Letterbox:
    tensor: Array  # [3, 128, 128]
    scale: float
    pad_x: float
    pad_y: float
    width: int
    height: int


class BlazeFace(Engine[Array, FaceDetections, _Letterbox]):
    """Face detection with BlazeFace short range."""

    name = "vision"

    def __init__(
        self,
        path: Path,
        *,
        runtime: RuntimeOptions | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
    ) -> None:
        super().__init__()
        self.path = path
        self.runtime_options = runtime or RuntimeOptions()
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self._model: ModelRunner | None = None
        self._anchors = anchors()

    @property
    def signature(self) -> Signature:
        return FRAME_SIGNATURE

    @property
    def provider(self) -> str:
        return self._model.provider if self._model is not None else "unloaded"

    def _load(self) -> None:
        self._model = open_model(self.path, self.runtime_options)
        MODEL_SIGNATURE.check_model(self._model.signature, model=self.path.name)

    def example_request(self) -> Array:
        return np.zeros((480, 640, 3), dtype=np.uint8)

    def prepare(self, request: Array) -> _Letterbox:
        frame = check_frame(self.name, request)
        h, w = frame.shape[:2]
        scale = min(INPUT_PX / w, INPUT_PX / h)
        rw = max(1, min(INPUT_PX, round(w * scale)))
        rh = max(1, min(INPUT_PX, round(h * scale)))
        pad_x, pad_y = (INPUT_PX - rw) // 2, (INPUT_PX - rh) // 2
        canvas = np.full((INPUT_PX, INPUT_PX, 3), -1.0, dtype=np.float32)
        canvas[pad_y : pad_y + rh, pad_x : pad_x + rw] = resize(frame, rh, rw) * (2 / 255) - 1
        return _Letterbox(canvas.transpose(2, 0, 1), rw / w, float(pad_x), float(pad_y), w, h)

    def infer(
        self, items: Sequence[_Letterbox], states: Sequence[Any]
    ) -> list[Outcome[FaceDetections]]:
        if self._model is None:
            raise EngineError("vision: not loaded")
        batch = np.stack([item.tensor for item in items])
        out = self._model.run({"input": batch})
        raw = out["regressors"]
        logits = np.clip(out["classificators"][..., 0], -80.0, 80.0)  # exp() stays finite
        scores = 1.0 / (1.0 + np.exp(-logits))
        results: list[Outcome[FaceDetections]] = []
        for k, item in enumerate(items):
            results.append(Ok(self._decode(raw[k], scores[k], item)))
        return results

    def _decode(self, raw: Array, scores: Array, lb: _Letterbox) -> FaceDetections:
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return FaceDetections((), lb.width, lb.height)
        r = raw[keep] / INPUT_PX
        a = self._anchors[keep]
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        bw, bh = r[:, 2], r[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        kps = r[:, 4 : 4 + 2 * NUM_KEYPOINTS].reshape(-1, NUM_KEYPOINTS, 2) + a[:, None, :]
        found = weighted_nms(boxes, scores[keep], kps.reshape(len(keep), -1), self.nms_threshold)
        detections = []
        for box, score, ext in found:
            # 128-pixel letterbox space -> frame pixels.
            px = (box * INPUT_PX - [lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y]) / lb.scale
            x1, y1 = max(0.0, float(px[0])), max(0.0, float(px[1]))
            x2, y2 = min(float(lb.width), float(px[2])), min(float(lb.height), float(px[3]))
            if x2 <= x1 or y2 <= y1:
                continue
            pts = (ext.reshape(NUM_KEYPOINTS, 2) * INPUT_PX - [lb.pad_x, lb.pad_y]) / lb.scale
            detections.append(
                Detection(
                    round(x1, 2),
                    round(y1, 2),
                    round(x2 - x1, 2),
                    round(y2 - y1, 2),
                    round(score, 4),
                    tuple((round(float(x), 2), round(float(y), 2)) for x, y in pts),
                )
            )
        return FaceDetections(tuple(detections), lb.width, lb.height)

    def _close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
