import { useEffect, useRef, useState } from "react";

import type { Detection } from "./protocol";

/** Results older than this are not drawn (the face may have moved on). */
export const DETECTION_MAX_AGE_MS = 3000;

interface Props {
  stream: MediaStream | null;
  detections: { frameTs: number; items: Detection[]; atMs: number } | null;
}

/**
 * The camera preview with the latest detections over it. Boxes are in the sent frame's
 * pixels; an SVG whose viewBox is the video's own size, laid over the element with the same
 * fit (contain, centred), scales them exactly as the picture is scaled.
 */
export function VideoStage({ stream, detections }: Props) {
  const video = useRef<HTMLVideoElement>(null);
  const [size, setSize] = useState<{ w: number; h: number } | null>(null);
  const [, tick] = useState(0);

  useEffect(() => {
    const v = video.current;
    if (!v) return;
    v.srcObject = stream;
    if (!stream) setSize(null);
  }, [stream]);

  // Age out stale boxes even when no new result arrives.
  useEffect(() => {
    if (!detections) return;
    const t = setTimeout(() => tick((n) => n + 1), DETECTION_MAX_AGE_MS);
    return () => clearTimeout(t);
  }, [detections]);

  const fresh = detections && performance.timeOrigin + performance.now() - detections.atMs < DETECTION_MAX_AGE_MS;
  const items = fresh ? detections.items : [];
  const faces = items.length === 1 ? "1 face" : `${items.length} faces`;

  return (
    <figure className="stage">
      <video
        ref={video}
        autoPlay
        playsInline
        muted
        aria-label="Your camera"
        onResize={(e) => setSize({ w: e.currentTarget.videoWidth, h: e.currentTarget.videoHeight })}
        onLoadedMetadata={(e) => setSize({ w: e.currentTarget.videoWidth, h: e.currentTarget.videoHeight })}
      />
      {size && size.w > 0 && (
        <svg className="boxes" viewBox={`0 0 ${size.w} ${size.h}`} preserveAspectRatio="xMidYMid meet" aria-hidden="true">
          {items.map((d, i) => {
            const [x, y, w, h] = d.box as [number, number, number, number];
            return (
              <g key={i} className="box" data-label={d.label} data-testid="detection-box">
                <rect x={x} y={y} width={w} height={h} vectorEffect="non-scaling-stroke" />
                <text x={x} y={Math.max(y - 4, 12)}>
                  {d.label} {Math.round(d.score * 100)}%
                </text>
              </g>
            );
          })}
        </svg>
      )}
      <figcaption data-testid="detections">{stream ? `Seen: ${faces}` : "Camera off"}</figcaption>
    </figure>
  );
}
