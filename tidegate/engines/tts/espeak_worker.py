"""The phonemizer process: Debian's libespeak-ng through ctypes, one line in, one line out.

Run as ``python -m tidegate.engines.tts.espeak_worker VOICE``. Each stdin line is a JSON
string (a clause of text); each stdout line is a JSON string of its IPA phonemes. It lives as
long as the TTS engine (one process, not one per sentence), and a crash of espeak cannot take
the server down with it. This module imports nothing of ours.
"""

from __future__ import annotations

import ctypes
import json
import sys

ESPEAK_LIBRARY = "libespeak-ng.so.1"
AUDIO_OUTPUT_SYNCHRONOUS = 2
CHARS_UTF8 = 1
PHONEMES_IPA = 0x02


def open_espeak(voice: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(ESPEAK_LIBRARY)
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_int,
        ctypes.c_int,
    ]
    if lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0) <= 0:
        raise RuntimeError("espeak_Initialize failed")
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"espeak-ng has no voice {voice!r}")
    return lib


def phonemize(lib: ctypes.CDLL, text: str) -> str:
    buf = ctypes.create_string_buffer(text.encode("utf-8"))
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    parts = []
    while ptr.value:
        out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), CHARS_UTF8, PHONEMES_IPA)
        if out:
            parts.append(out.decode("utf-8", errors="replace").strip())
    return " ".join(p for p in parts if p)


def main() -> int:
    voice = sys.argv[1] if len(sys.argv) > 1 else "en-us"
    lib = open_espeak(voice)
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        try:
            text = json.loads(line)
            result = phonemize(lib, text) if isinstance(text, str) else ""
        except ValueError:
            result = ""
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
