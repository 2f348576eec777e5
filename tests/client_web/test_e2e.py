"""The browser client end to end: Playwright drives Debian's Chromium through the built client
served by ``tidegate serve`` (the assistant engines with vision), both inside a network
namespace this test creates and deletes (NETWORK.md). The fake microphone plays a recorded
sentence, the fake camera shows a face (skimage's astronaut). The page connects, shows the
transcript and a streamed, spoken reply, a face box over the video, interrupts the reply, comes
back after its control channel is dropped (the session resumes) and answers typed text;
push-to-talk gates the microphone and the camera picker swaps the sent track.
Screenshots are kept in reports/client-web-e2e/ (printed)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.engines.vision.test_faces import ASTRONAUT_FACE
from tests.netns import CHROMIUM, CHROMIUM_FLAGS, in_netns, network_namespace, stop
from tests.support import prepare_models, scaled

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "client-web"
CACHE = ROOT / ".cache"
SHOTS = ROOT / "reports" / "client-web-e2e"
MODELS = ("silero-vad", "whisper-tiny-en", "smollm2-135m", "piper-joe", "blazeface")
NETNS_ADDR = "10.250.0.1"
PORT = 8080  # a fresh namespace has nothing else listening
# "Ever tried." from the recorded clip the ASR tests use (moonshine's beckett.wav, 16 kHz).
SPEECH_S = (0.25, 1.3)
LEAD_S, TOTAL_S = 1.5, 90.0  # silence before; the file loops after TOTAL_S
BROWSER_DEADLINE_S = scaled(95)  # the script stops by itself (pytest's limit: scaled(120) s)


def _speech_wav(path: Path) -> None:
    """The sentence after LEAD_S of silence, then silence (Chromium loops the file)."""
    with wave.open(str(CACHE / "assets" / "beckett.wav")) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    speech = pcm[int(SPEECH_S[0] * rate) : int(SPEECH_S[1] * rate)]
    out = np.zeros(int(TOTAL_S * rate), np.int16)
    start = int(LEAD_S * rate)
    out[start : start + len(speech)] = speech
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(out.tobytes())


def _face_y4m(path: Path) -> tuple[int, int]:
    """skimage's astronaut as a one-frame 4:2:0 Y4M clip (Chromium repeats the frame)."""
    rgb = np.asarray(Image.open(CACHE / "assets" / "astronaut.png").convert("RGB"), np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        means: np.ndarray = c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        return means

    planes = [np.clip(p, 0, 255).round().astype(np.uint8) for p in (y, sub(u), sub(v))]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        f.write(b"FRAME\n" + b"".join(p.tobytes() for p in planes))
    return w, h


def _prepared() -> Path:
    return prepare_models(*MODELS) / "models"


@pytest.mark.slow
def test_browser_client_speaks_sees_interrupts_and_resumes(tmp_path: Path) -> None:
    """One session through the real page: transcript, streamed and spoken reply, face box,
    interrupt, a dropped control channel resumed, typed text answered."""
    assert shutil.which("ip"), "iproute2 is needed (scripts/setup-system.sh installs it)"
    assert Path(CHROMIUM).exists(), "chromium is needed (scripts/setup-system.sh installs it)"
    assert (WEB / "dist" / "index.html").exists(), "the client is not built: run `make web`"
    assert (WEB / "node_modules" / "playwright-core").exists(), "run `make web` (npm ci)"
    wav, y4m = tmp_path / "speech.wav", tmp_path / "face.y4m"
    _speech_wav(wav)
    frame_w, frame_h = _face_y4m(y4m)
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(_prepared())
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    print(f"\nscreenshots: {SHOTS}")
    env = {
        "TIDEGATE_HOST": "127.0.0.1",
        "TIDEGATE_PORT": str(PORT),
        "TIDEGATE_JWT_SECRET": secrets.token_hex(32),
        "TIDEGATE_DATA_DIR": str(data),
        "TIDEGATE_LOG_LEVEL": "warning",
        "TIDEGATE_ENGINES": "vad,asr,llm,tts,vision",
        "TIDEGATE_ASSISTANT_VISION_INTERVAL_S": "0.5",
        "TIDEGATE_METRICS_INTERVAL_S": "1",
        "TIDEGATE_ICE_HOSTS": NETNS_ADDR,
        "TIDEGATE_ICE_PORTS": "40000-40010",
    }
    flags = [f for f in CHROMIUM_FLAGS if f not in ("--headless=new", "--remote-debugging-pipe")]
    flags += [
        f"--use-file-for-fake-audio-capture={wav}",
        f"--use-file-for-fake-video-capture={y4m}",
    ]
    args = {
        "origin": f"http://127.0.0.1:{PORT}",
        "chromium": CHROMIUM,
        "flags": flags,
        "shots": str(SHOTS),
        "deadline_s": BROWSER_DEADLINE_S,
    }
    log = (tmp_path / "server.log").open("w+")
    with network_namespace([NETNS_ADDR]) as ns:
        server = subprocess.Popen(
            in_netns(ns, [sys.executable, "-m", "tidegate", "serve"]),
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            run = subprocess.run(
                in_netns(ns, ["node", str(WEB / "e2e" / "browser.mjs"), json.dumps(args)]),
                cwd=WEB,
                capture_output=True,
                text=True,
                timeout=BROWSER_DEADLINE_S + 15,
            )
        finally:
            stop(server)
    log.seek(0)
    server_log = log.read()[-3000:]
    log.close()
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no result from the browser:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    seen: dict[str, Any] = json.loads(lines[-1])
    print(json.dumps(seen["steps"]))
    context = f"\nsteps: {seen['steps']}\nconsole: {seen['console'][-20:]}\nserver: {server_log}"
    assert run.returncode == 0 and "error" not in seen, seen.get("error", "") + context

    # The face box lies over the video element, where the astronaut's face is.
    face, video = seen["face"]["box"], seen["face"]["video"]
    assert face["width"] > 10 and face["height"] > 10, seen["face"]
    assert video["x"] <= face["x"] and face["x"] + face["width"] <= video["x"] + video["width"]
    assert video["y"] <= face["y"] and face["y"] + face["height"] <= video["y"] + video["height"]
    # ... where the astronaut's face is in the picture (give or take the encoder's blur).
    scale = min(video["width"] / frame_w, video["height"] / frame_h)
    cx = (
        face["x"] + face["width"] / 2 - video["x"] - (video["width"] - frame_w * scale) / 2
    ) / scale
    cy = (
        face["y"] + face["height"] / 2 - video["y"] - (video["height"] - frame_h * scale) / 2
    ) / scale
    fx, fy, fw, fh = ASTRONAUT_FACE
    assert abs(cx - (fx + fw / 2)) < fw / 2 and abs(cy - (fy + fh / 2)) < fh / 2, (cx, cy, face)
    assert "1 face" in seen["face"]["caption"]

    # The sentence's final, then a reply that streamed and was heard on the track.
    finals = [t["text"].lower() for t in seen["transcript"] if t["state"] == "final"]
    assert any("tried" in t for t in finals), seen["transcript"]
    assert any(t["state"] == "replying" for t in seen["replyStreaming"]), seen["replyStreaming"]
    assert seen["replyAudio"]["peak"] > 0.01, seen["replyAudio"]
    assert any(t["state"] == "cancelled" for t in seen["afterInterrupt"]), seen["afterInterrupt"]

    # A dropped control channel: a second socket, the same session, resumed.
    assert seen["resumed"]["sockets"] >= 2 and seen["resumed"]["session"] == seen["session"]
    assert "resumed 1" in seen["resumed"]["link"], seen["resumed"]
    assert seen["typed"]["user"]["text"] == "Say hello."
    assert seen["typed"]["reply"]["text"].strip("…"), seen["typed"]

    # Push to talk gates the microphone (pointer and Space); the pickers list the devices.
    ptt = seen["ptt"]
    assert ptt["handsFree"] == [True] and ptt["idle"] == [False], ptt
    assert ptt["held"] == [True] and ptt["released"] == [False], ptt
    assert ptt["space"] == [True] and ptt["spaceUp"] == [False], ptt
    assert len(seen["devices"]["cams"]) >= 2 and len(seen["devices"]["mics"]) >= 2
    assert "media connected" in seen["devices"]["link"], seen["devices"]

    # The latency panel: a round trip and per-stage rows.
    assert seen["latency"]["rtt"].endswith("ms"), seen["latency"]
    assert seen["latency"]["serverJitter"].endswith("ms"), seen["latency"]
    labels = [row[0] for row in seen["latency"]["rows"]]
    assert "asr.final" in labels and "first token" in labels, labels
    assert not seen["errors"], seen["errors"]
    assert sorted(p.name for p in SHOTS.glob("*.png")) == [
        "1-face.png",
        "2-reply.png",
        "3-interrupted.png",
        "4-typed.png",
    ]
