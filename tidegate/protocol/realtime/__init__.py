"""The OpenAI-Realtime dialect (GA event names and shapes) as a sans-I/O translator.

- :mod:`.events`: the client events, parsed and validated from JSON text;
- :mod:`.session`: the session's effective configuration and its tidegate config;
- :mod:`.items`: the conversation items the dialect reports on;
- :mod:`.audio`: the audio formats, and the :class:`~.audio.AudioCodec` port (implemented in
  ``tidegate.media.realtime_audio``: protocol/ does no DSP);
- :mod:`.handshake`: the WebSocket opening (token, subprotocol, ``?model=``);
- :mod:`.commands`: requests that tidegate's own client messages cannot carry;
- :mod:`.translator`: :class:`RealtimeTranslator`, the whole dialect, driven by a thin shell.

docs/realtime.md is the contract.
"""

from .audio import AudioCodec, AudioEncoder, AudioFormat
from .commands import ClearInputAudio, Command, CommitInputAudio, CreateResponse
from .errors import RealtimeCode, RealtimeError
from .events import CLIENT_EVENT_TYPES, PARSERS, UNSUPPORTED_EVENTS, parse_client_event
from .handshake import Handshake, accept
from .session import SessionConfig
from .translator import RealtimeTranslator, SessionInput

__all__ = [
    "CLIENT_EVENT_TYPES",
    "PARSERS",
    "UNSUPPORTED_EVENTS",
    "AudioCodec",
    "AudioEncoder",
    "AudioFormat",
    "ClearInputAudio",
    "Command",
    "CommitInputAudio",
    "CreateResponse",
    "Handshake",
    "RealtimeCode",
    "RealtimeError",
    "RealtimeTranslator",
    "SessionConfig",
    "SessionInput",
    "accept",
    "parse_client_event",
]
