"""Face detection on real photos: BlazeFace and MTCNN find the astronaut's face and none in
the coffee cup, in frame pixel coordinates, batched across sessions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.service import EngineSpec, build_engine
from tidegate.engines.vision.blazeface import BlazeFace
from tidegate.engines.vision.imaging import nms, resize
from tidegate.engines.vision.mtcnn import Mtcnn

# Where the face is in skimage's astronaut.png (x, y, width, height), checked by eye.
ASTRONAUT_FACE = (178.0, 81.0, 94.0, 94.0)


def photo(assets: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(assets / f"{name}.png").convert("RGB"))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.parametrize("model", ["blazeface", "mtcnn"])
async def test_finds_the_face_and_no_face_in_coffee(
    model: str, data_dir: Path, assets: Path
) -> None:
    """Sessions sending the astronaut (also scaled to 640x480), and coffee, share batches:
    one face where the astronaut's is, none in the coffee photo."""
    engine = build_engine(EngineSpec("vision", model), data_dir)
    assert isinstance(engine, BlazeFace | Mtcnn)
    sched = Scheduler(engine, BatchPolicy(max_batch_items=8, batch_wait_s=0.05))
    await sched.start()
    try:
        astronaut, coffee = photo(assets, "astronaut"), photo(assets, "coffee")
        wide = np.zeros((480, 640, 3), np.uint8)
        wide[:, 80:560] = resize(astronaut, 480, 480).astype(np.uint8)
        a, c, w = await asyncio.gather(
            sched.submit(astronaut), sched.submit(coffee), sched.submit(wide)
        )
        assert len(c) == 0 and (c.width, c.height) == (600, 400)
        assert len(a) == 1 and a.detections[0].score > 0.8
        face = a.detections[0]
        assert iou((face.x, face.y, face.width, face.height), ASTRONAUT_FACE) > 0.5
        assert len(w) == 1
        fw = w.detections[0]
        scaled = (
            ASTRONAUT_FACE[0] * 480 / 512 + 80,
            ASTRONAUT_FACE[1] * 480 / 512,
            ASTRONAUT_FACE[2] * 480 / 512,
            ASTRONAUT_FACE[3] * 480 / 512,
        )
        assert iou((fw.x, fw.y, fw.width, fw.height), scaled) > 0.5
        assert sched.stats()["batches"] == 1
    finally:
        await sched.close()


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    """Greedy NMS drops boxes overlapping a better one and keeps separate ones."""
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


def test_resize_is_an_area_average() -> None:
    """An exact 5x reduction averages each 5x5 block."""
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    ref = img.reshape(96, 5, 128, 5, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(resize(img, 96, 128) - ref).max() < 1e-3
