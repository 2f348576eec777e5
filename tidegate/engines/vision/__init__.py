"""Face detection engines: BlazeFace short range (default) and MTCNN (more accurate, slower).
Both take RGB frames (uint8 [H, W, 3]) of any size and answer with boxes in the frame's
pixel coordinates, batched across sessions."""

from .faces import Detection, FaceDetections

__all__ = ["Detection", "FaceDetections"]
