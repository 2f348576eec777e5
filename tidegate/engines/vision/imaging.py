"""Image resampling and non-maximum suppression in numpy (no OpenCV, no Pillow)."""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def _box_reduce(img: Array, fy: int, fx: int) -> Array:
    """Average ``fy`` x ``fx`` blocks (an area filter before a large downscale): strided
    slices summed rows then columns, in integers for uint8 input (exact and fast)."""
    h, w = img.shape[0] // fy * fy, img.shape[1] // fx * fx
    acc: Any = np.float32 if img.dtype != np.uint8 else (np.uint32 if fy * fx > 257 else np.uint16)
    rows = img[0:h:fy].astype(acc)
    for k in range(1, fy):
        rows += img[k:h:fy]
    out = rows[:, 0:w:fx].copy()
    for k in range(1, fx):
        out += rows[:, k:w:fx]
    result: Array = out.astype(np.float32)
    result *= 1.0 / (fy * fx)
    return result


def resize(img: Array, out_h: int, out_w: int) -> Array:
    """Resize an [H, W, C] image to float32 [out_h, out_w, C]: an integer area filter for
    large reductions, then separable bilinear sampling at pixel centres."""
    src = img
    fy, fx = img.shape[0] // out_h, img.shape[1] // out_w
    if fy >= 2 or fx >= 2:
        src = _box_reduce(img, max(fy, 1), max(fx, 1))
    h, w = src.shape[:2]
    if (h, w) == (out_h, out_w):
        return src.astype(np.float32, copy=False)
    ys = np.clip((np.arange(out_h, dtype=np.float32) + 0.5) * (h / out_h) - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w, dtype=np.float32) + 0.5) * (w / out_w) - 0.5, 0, w - 1)
    y0 = ys.astype(np.intp)
    x0 = xs.astype(np.intp)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    src = src.astype(np.float32, copy=False)
    rows = src[y0] * (1 - wy) + src[y1] * wy
    out: Array = rows[:, x0] * (1 - wx) + rows[:, x1] * wx
    return out


def crop_resize(img: Array, boxes: Array, size: int) -> Array:
    """Crops of ``img`` [H, W, 3] at ``boxes`` [N, 4] (x1, y1, x2, y2 in pixels, inclusive,
    may reach outside the image: outside is zero), each resampled bilinearly to
    [size, size]; returns float32 [N, size, size, 3]."""
    n = len(boxes)
    if n == 0:
        return np.zeros((0, size, size, 3), dtype=np.float32)
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (boxes[:, k].astype(np.float32)[:, None] for k in range(4))
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    xs = x1 + t[None, :] * (x2 - x1 + 1) - 0.5  # [N, size]
    ys = y1 + t[None, :] * (y2 - y1 + 1) - 0.5
    x0 = np.floor(xs).astype(np.intp)
    y0 = np.floor(ys).astype(np.intp)
    wx = (xs - x0)[:, None, :, None]
    wy = (ys - y0)[:, :, None, None]
    src = img.astype(np.float32, copy=False)

    def sample(yy: Array, xx: Array) -> Array:
        inside = ((yy >= 0) & (yy < h))[:, :, None] & ((xx >= 0) & (xx < w))[:, None, :]
        yc = np.clip(yy, 0, h - 1)
        xc = np.clip(xx, 0, w - 1)
        vals: Array = src[yc[:, :, None], xc[:, None, :]]
        return vals * inside[..., None]

    top = sample(y0, x0) * (1 - wx) + sample(y0, x0 + 1) * wx
    bottom = sample(y0 + 1, x0) * (1 - wx) + sample(y0 + 1, x0 + 1) * wx
    out: Array = (top * (1 - wy) + bottom * wy).astype(np.float32)
    return out


def iou(box: Array, boxes: Array, *, plus_one: float = 0.0, mode: str = "union") -> Array:
    """Overlap of ``box`` (x1, y1, x2, y2) with each of ``boxes``: intersection over union,
    or over the smaller area (``mode="min"``). ``plus_one`` is 1 for inclusive pixel boxes."""
    xx1 = np.maximum(box[0], boxes[:, 0])
    yy1 = np.maximum(box[1], boxes[:, 1])
    xx2 = np.minimum(box[2], boxes[:, 2])
    yy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(0.0, xx2 - xx1 + plus_one) * np.maximum(0.0, yy2 - yy1 + plus_one)
    area = (box[2] - box[0] + plus_one) * (box[3] - box[1] + plus_one)
    areas = (boxes[:, 2] - boxes[:, 0] + plus_one) * (boxes[:, 3] - boxes[:, 1] + plus_one)
    if mode == "min":
        out: Array = inter / np.maximum(np.minimum(area, areas), 1e-9)
    else:
        out = inter / np.maximum(area + areas - inter, 1e-9)
    return out


def nms(
    boxes: Array, scores: Array, threshold: float, *, plus_one: float = 0.0, mode: str = "union"
) -> Array:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        overlap = iou(boxes[i], boxes[rest], plus_one=plus_one, mode=mode)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)


def weighted_nms(
    boxes: Array, scores: Array, extra: Array, threshold: float
) -> list[tuple[Array, float, Array]]:
    """MediaPipe's blending suppression: each cluster of boxes overlapping the best one by
    more than ``threshold`` is replaced by their score-weighted mean (box and ``extra``,
    e.g. keypoints), with the best score. Returns (box, score, extra) best first."""
    order = np.argsort(-scores, kind="stable")
    out: list[tuple[Array, float, Array]] = []
    while order.size:
        i = int(order[0])
        overlap = iou(boxes[i], boxes[order])
        cluster = order[overlap > threshold]
        if cluster.size == 0:
            cluster = order[:1]
        w = scores[cluster][:, None]
        box = (boxes[cluster] * w).sum(axis=0) / w.sum()
        ext = (extra[cluster] * w).sum(axis=0) / w.sum()
        out.append((box, float(scores[i]), ext))
        order = order[overlap <= threshold]
        order = order[order != i]
    return out
