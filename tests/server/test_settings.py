"""Settings: defaults, a TOML file, environment variables, and errors that name the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidegate.engines.registry import VISION
from tidegate.server.errors import ConfigError
from tidegate.server.settings import Settings


def test_defaults_are_safe() -> None:
    """Loopback only, no secret, no public anything by default."""
    s = Settings.load(environ={})
    assert s.host == "127.0.0.1" and s.port == 8080
    assert s.jwt_secret is None
    assert s.allowed_origins == ()


def test_every_cpu_engine_by_default_and_an_empty_list_serves_none() -> None:
    """A bare configuration serves every CPU engine; TIDEGATE_ENGINES= (empty) serves none,
    and a list serves what it names (an empty value elsewhere still means the default)."""
    assert Settings.load(environ={}).engines == ("vad", "asr", "vision", "llm", "tts")
    assert Settings.load(environ={"TIDEGATE_ENGINES": ""}).engines == ()
    assert Settings.load(environ={"TIDEGATE_ENGINES": "vad, asr"}).engines == ("vad", "asr")
    assert Settings.load(environ={"TIDEGATE_VISION_MODEL": ""}).engine(VISION).model == "blazeface"


def test_environment_overrides(tmp_path: Path) -> None:
    """TIDEGATE_<NAME> sets each field with its type."""
    s = Settings.load(
        environ={
            "TIDEGATE_PORT": "9000",
            "TIDEGATE_DATA_DIR": str(tmp_path),
            "TIDEGATE_SEND_TIMEOUT_S": "2.5",
            "TIDEGATE_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "TIDEGATE_JWT_ISSUER": "none",
        }
    )
    assert s.port == 9000 and s.data_dir == tmp_path and s.send_timeout_s == 2.5
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.jwt_issuer is None


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    """A TOML file is read first; the environment wins over it; explicit overrides win last."""
    path = tmp_path / "tidegate.toml"
    path.write_text('port = 7000\nmax_sessions = 5\nallowed_origins = ["https://x.example"]\n')
    s = Settings.load(environ={"TIDEGATE_CONFIG": str(path), "TIDEGATE_MAX_SESSIONS": "9"})
    assert (s.port, s.max_sessions, s.allowed_origins) == (7000, 9, ("https://x.example",))
    assert Settings.load(environ={"TIDEGATE_CONFIG": str(path)}, port=7001).port == 7001


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"TIDEGATE_PORT": "eighty"}, "TIDEGATE_PORT"),
        ({"TIDEGATE_PORT": "70000"}, "port must be"),
        ({"TIDEGATE_MAX_SESSIONS": "0"}, "max_sessions must be at least 1"),
        ({"TIDEGATE_SEND_TIMEOUT_S": "-1"}, "cannot be negative"),
        ({"TIDEGATE_CONFIG": "/nonexistent/tidegate.toml"}, "cannot read config file"),
        ({"TIDEGATE_AUDIO_OUT_LEAD_MS": "150"}, "audio_out_lead_ms must be 0..100"),
        ({"TIDEGATE_JWKS_REFRESH_MIN_S": "0"}, "jwks_refresh_min_s must be positive"),
        ({"TIDEGATE_JWKS_CACHE_MAX_S": "10"}, "jwks_cache_max_s .10. must be at least"),
        ({"TIDEGATE_WEB_TOKEN_URL": "javascript:x"}, "web_token_url must be"),
    ],
)
def test_bad_values_are_named(environ: dict[str, str], words: str) -> None:
    """A bad value is refused with the setting's name."""
    with pytest.raises(ConfigError, match=words):
        Settings.load(environ=environ)


def test_unknown_file_key(tmp_path: Path) -> None:
    """A typo in the file is an error, not silently ignored."""
    path = tmp_path / "t.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        Settings.load(environ={"TIDEGATE_CONFIG": str(path)})


def test_every_setting_is_documented() -> None:
    """Each setting has a doc string (shown by `tidegate config`)."""
    for name, _default, doc in Settings().describe():
        assert doc, name
