"""What a face detector answers, and the frame checks both detectors share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import RequestError
from ..signature import Signature, TensorSpec

MAX_FRAME_SIDE_PX = 8192

FRAME_SIGNATURE = Signature(
    inputs=(TensorSpec("frame", "uint8", ("batch", "height", "width", 3)),),
    outputs=(
        TensorSpec("boxes", "float32", ("batch", "faces", 4)),
        TensorSpec("scores", "float32", ("batch", "faces")),
    ),
    doc="an RGB frame per session; boxes are [x, y, width, height] in frame pixels",
)


@dataclass(frozen=True, slots=True)
class Detection:
    """One face: box in frame pixels (left, top, width, height), score, keypoints (x, y)."""

    x: float
    y: float
    width: float
    height: float
    score: float
    keypoints: tuple[tuple[float, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "box": [self.x, self.y, self.width, self.height],
            "score": self.score,
            "keypoints": [list(k) for k in self.keypoints],
        }


@dataclass(frozen=True, slots=True)
class FaceDetections:
    """All faces found in one frame, best first."""

    detections: tuple[Detection, ...]
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.detections)


def check_frame(name: str, frame: Any) -> np.ndarray[Any, Any]:
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise RequestError(f"{name}: frame dtype {arr.dtype}, expected uint8 RGB")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise RequestError(f"{name}: frame shape {list(arr.shape)}, expected [height, width, 3]")
    h, w = arr.shape[:2]
    if not (1 <= h <= MAX_FRAME_SIDE_PX and 1 <= w <= MAX_FRAME_SIDE_PX):
        raise RequestError(f"{name}: frame {w}x{h}, expected sides of 1..{MAX_FRAME_SIDE_PX} px")
    return arr
