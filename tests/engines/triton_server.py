"""A real Triton Inference Server for the tests: nvidia-pytriton's bundled server (CPU, python
backend with ONNX Runtime inside), started by scripts/pytriton_serve.py from the venv that
scripts/fetch_assets.py builds, on 127.0.0.1 ports picked here. It can be stopped and started
again on the same ports (the failure tests)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support import scaled

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "pytriton-venv"
SCRIPT = ROOT / "scripts" / "pytriton_serve.py"


def ensure_venv() -> Path:
    """The pytriton venv's python, built (by fetch_assets.py) if it is missing or stale."""
    spec = importlib.util.spec_from_file_location(
        "fetch_assets", ROOT / "scripts" / "fetch_assets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.pytriton_venv(ROOT / ".cache")
    return VENV / "bin" / "python"


def free_port() -> int:
    """A free port (nothing is started on it: for a server that is not there)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are picked (a port
    released at once can be handed out again by the next bind: it was, grpc and metrics
    once got the same one)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class _ServerProcess:
    """A server process on 127.0.0.1 ports picked here, started in a process group of its own:
    Triton's python-backend stubs outlive a signalled server, so :meth:`stop` ends the group."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.grpc_port, self.http_port, self.metrics_port = free_ports(3)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _launch(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        ready: str,
        *,
        exact_line: bool,
        timeout_s: float,
    ) -> None:
        """Start ``args`` and wait until its log shows ``ready`` (a whole line of it, or
        anywhere); a server that exits or never gets there raises with its log's tail."""
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        end = time.monotonic() + scaled(timeout_s)
        while time.monotonic() < end:
            text = log.read_text(errors="replace")
            if (ready in text.splitlines()) if exact_line else (ready in text):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"{args[0]} did not start; its log ends:\n{tail}")

    def stop(self, term_timeout_s: float = 40.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=scaled(term_timeout_s))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=scaled(10))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group (backend stubs)


class TritonServer(_ServerProcess):
    """One pytriton server process serving ``args`` (pytriton_serve.py's model options)."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        super().__init__(workdir)
        self.args = args
        self.python = ensure_venv()
        self.starts = 0

    def start(self, timeout_s: float = 100.0) -> None:
        self.starts += 1
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        args = [
            str(self.python),
            str(SCRIPT),
            *self.args,
            "--grpc-port",
            str(self.grpc_port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            str(self.metrics_port),
            "--workspace",
            str(self.workdir / f"workspace-{self.starts}"),
        ]
        log = self.workdir / f"triton-{self.starts}.log"
        self._launch(args, env, log, "ready", exact_line=True, timeout_s=timeout_s)

    def restart(self) -> None:
        self.stop()
        self.start()


class BundledTritonServer(_ServerProcess):
    """The ``tritonserver`` binary that nvidia-pytriton bundles (Triton 2.51, python backend
    only), started directly on a model repository written by ``export-triton``: the exported
    python models run as a stock Triton runs them (their own model.py, Triton's python
    backend stub), not through pytriton's bindings. Binds 127.0.0.1 only."""

    def __init__(self, workdir: Path, repo: Path, models: list[str]) -> None:
        super().__init__(workdir)
        self.repo = repo
        self.models = models
        python = ensure_venv()
        self.venv = python.parents[1]
        site = next((self.venv / "lib").glob("python3.*/site-packages"))
        self.dist = site / "pytriton" / "tritonserver"
        self.libs = site / "nvidia_pytriton.libs"
        version = site.parent.name.removeprefix("python")
        self.stub = self.dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        self.libpython = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def start(self, timeout_s: float = 100.0) -> None:
        import shutil

        backends = self.workdir / "backends"
        shutil.copytree(self.dist / "backends", backends, dirs_exist_ok=True)
        shutil.copy(self.stub, backends / "python" / "triton_python_backend_stub")
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["LD_LIBRARY_PATH"] = f"{self.libpython}:{self.libs}"
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"  # the stub's python
        log = self.workdir / "tritonserver.log"
        args = [
            str(self.dist / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=5",
        ]
        self._launch(
            args, env, log, "Started GRPCInferenceService", exact_line=False, timeout_s=timeout_s
        )

    def stop(self, term_timeout_s: float = 30.0) -> None:
        super().stop(term_timeout_s)
