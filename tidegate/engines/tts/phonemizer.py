"""The client of the phonemizer process (``espeak_worker``): started once, kept running, one
request at a time (a lock), restarted if it dies. Text is split into clauses here so that
each clause's punctuation reaches the voice (Piper was trained on phonemes with it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

from ..errors import EngineError, ModelError

CLAUSE_RE = re.compile(r"([^,;:.!?]+)([,;:.!?]*)")
PHONEMIZER_TIMEOUT_S = 5.0


class Phonemizer:
    """Text -> IPA phonemes through a long-lived espeak-ng (libespeak-ng) process."""

    def __init__(self, voice: str = "en-us", *, timeout_s: float = PHONEMIZER_TIMEOUT_S) -> None:
        self.voice = voice
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.started = 0  # processes started (1 unless one died)

    def start(self) -> None:
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tidegate.engines.tts.espeak_worker", self.voice],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.started += 1
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline()
        if not first:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            self._proc.wait()
            self._proc = None
            raise ModelError(
                "espeak-ng could not start (apt-get install espeak-ng): " + err.strip()[-300:]
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _ask(self, text: str) -> str:
        self._start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(text) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self._stop()
            raise EngineError("tts: the espeak-ng process died; it restarts on the next request")
        return str(json.loads(line))

    def phonemize(self, text: str) -> str:
        """Phonemes of ``text``, clause by clause, each followed by its punctuation."""
        out = []
        with self._lock:
            for m in CLAUSE_RE.finditer(text):
                words, punct = m.group(1).strip(), m.group(2)
                if not words:
                    continue
                phonemes = self._ask(words)
                if phonemes:
                    out.append(phonemes + (punct[:1] if punct else ""))
        return " ".join(out)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()

    def close(self) -> None:
        with self._lock:
            self._stop()
