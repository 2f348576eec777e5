"""Settings: defaults, a TOML file, environment variables, and errors that name the culprit."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from tidegate.engines.registry import ASR, KINDS, LLM, TTS, VAD, VISION
from tidegate.server.cli import config_table
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
    assert Settings.load(environ={}).engines == ("vad", "asr", "vision", "llm", "tts", "turn")
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
        ({"TIDEGATE_SEND_TIMEOUT_S": "-1"}, "send_timeout_s must be a finite number of seconds"),
        # NaN and infinity: every comparison with NaN is false (a timer never due)
        ({"TIDEGATE_INTERRUPT_PAUSE_AFTER_S": "nan"}, "interrupt_pause_after_s must be a finite"),
        ({"TIDEGATE_INTERRUPT_ECHO_HOLD_S": "inf"}, "interrupt_echo_hold_s must be a finite"),
        ({"TIDEGATE_CONFIG": "/nonexistent/tidegate.toml"}, "cannot read config file"),
        ({"TIDEGATE_AUDIO_OUT_LEAD_MS": "150"}, "audio_out_lead_ms must be 0..100"),
        ({"TIDEGATE_JWKS_REFRESH_MIN_S": "0"}, "jwks_refresh_min_s must be positive"),
        ({"TIDEGATE_JWKS_CACHE_MAX_S": "10"}, "jwks_cache_max_s .10. must be at least"),
        ({"TIDEGATE_WEB_TOKEN_URL": "javascript:x"}, "web_token_url must be"),
        ({"TIDEGATE_INTERRUPT_ECHO_LIKENESS": "0"}, "interrupt_echo_likeness must be positive"),
        ({"TIDEGATE_INTERRUPT_ECHO_LIKENESS": "nan"}, "interrupt_echo_likeness must be positive"),
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


# -- every documented variable ------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
CONFIG_DOC = ROOT / "docs" / "configuration.md"
TABLE_ROW = re.compile(r"^\| `(TIDEGATE_[A-Z0-9_]+)` \| `(.*?)` \| (.*) \|$")


def documented() -> dict[str, str]:
    """The variables of docs/configuration.md's table, with their documented defaults."""
    rows = {}
    for line in CONFIG_DOC.read_text().splitlines():
        m = TABLE_ROW.match(line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


# Values that a type alone cannot make valid (choices, formats, companions), each not the default.
SPECIAL = {
    "TIDEGATE_HOST": "127.0.0.2",
    "TIDEGATE_LOG_LEVEL": "debug",
    "TIDEGATE_JWT_SECRET": "s3cret",
    "TIDEGATE_JWT_AUDIENCE": "aud2",
    "TIDEGATE_JWT_ISSUER": "https://issuer.example",
    "TIDEGATE_ALLOWED_ORIGINS": "https://a.example,https://b.example",
    "TIDEGATE_WEB_TOKEN_URL": "https://sso.example/token",
    "TIDEGATE_DEV_LOGIN": "off",
    "TIDEGATE_DEFAULT_MODE": "transcribe",
    "TIDEGATE_ROUTE_ID": "a1",
    "TIDEGATE_ICE_SERVERS": "stun:127.0.0.1:3478",
    "TIDEGATE_ICE_HOSTS": "203.0.113.7=127.0.0.1",
    "TIDEGATE_ICE_PORTS": "40000-40100",
    "TIDEGATE_TURN_URLS": "turn:turn.example:3478",
    "TIDEGATE_TURN_SECRET": "coturn-secret",
    "TIDEGATE_PROXY_ADDRESSES": "10.0.0.1,10.0.0.2",
    "TIDEGATE_ENGINES": "vad,asr",
    "TIDEGATE_VISION_MODEL": "mtcnn",
    "TIDEGATE_ASR_MODEL": "whisper-base",
    "TIDEGATE_ASR_LANGUAGE": "de",
    "TIDEGATE_ASR_LANGUAGES": "de,en",
    "TIDEGATE_ENGINE_RUNTIME": "tensorrt",
    "TIDEGATE_ENGINE_PROVIDERS": "cuda,cpu",
    "TIDEGATE_VAD_RUNTIME": "triton",
    "TIDEGATE_ASR_RUNTIME": "triton",
    "TIDEGATE_VISION_RUNTIME": "onnx",
    "TIDEGATE_LLM_RUNTIME": "providers",
    "TIDEGATE_TTS_RUNTIME": "tensorrt",
    "TIDEGATE_TURN_RUNTIME": "onnx",
    "TIDEGATE_TURN_POLICY": "silence",
    "TIDEGATE_INTERRUPT_BACKCHANNELS": "interrupt",
    "TIDEGATE_INTERRUPT_BACKCHANNEL_PHRASES": "mm-hmm,sounds good",
    "TIDEGATE_AUDIO_ECHO_CANCELLATION": "on",
    "TIDEGATE_TRITON_URL": "gpu-pool:8001",
    "TIDEGATE_TRITON_URLS": "asr=gpu-a:8001,vision=gpu-b:8001",
    "TIDEGATE_TRITON_POLICY": "fallback",
    "TIDEGATE_LLM_MODEL": "smollm2-135m-fp32",
    "TIDEGATE_LLM_PROVIDERS": "a=http://127.0.0.1:8081,b=http://10.0.0.9:8000",
    "TIDEGATE_LLM_PROVIDER_OPTIONS": "a.model=smol,b.max_requests=3",
    "TIDEGATE_ASSISTANT_SYSTEM_PROMPT": "Be brief.",
    "TIDEGATE_DATABASE_URL": "postgresql://u@127.0.0.1:5432/db",
    "TIDEGATE_REDIS_URL": "redis://127.0.0.1:6379/0",
    "TIDEGATE_REDIS_KEY_PREFIX": "t2:",
    "TIDEGATE_NODE_ID": "node-7",
    "TIDEGATE_NODE_URL": "http://10.0.0.7:8080",
    "TIDEGATE_METRICS_HOST": "127.0.0.3",
}


def _value(variable: str, hint: object, default: object, tmp_path: Path) -> str:
    """A valid value of ``variable`` that is not its default."""
    if variable in SPECIAL:
        return SPECIAL[variable]
    inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = inner[0]
    if kind is bool:
        return "false" if default else "true"
    if kind is int:
        return str(default + 1 if isinstance(default, int) else 7)
    if kind is float:  # half the default keeps every order between settings (min < max)
        return str(default / 2 if isinstance(default, float) and default else 0.5)
    if kind is Path:
        path = tmp_path / variable.lower()
        path.write_text("")  # TIDEGATE_CONFIG must be readable: an empty TOML file
        return str(path)
    raise AssertionError(f"{variable}: give it a valid value in SPECIAL ({hint})")


def test_docs_table_is_the_settings() -> None:
    """docs/configuration.md's table is what `tidegate config --markdown` prints: every
    variable, its default and its doc."""
    text = CONFIG_DOC.read_text()
    begin, end = text.index("<!-- BEGIN SETTINGS"), text.index("<!-- END SETTINGS -->")
    table = text[text.index("\n", begin) + 1 : end].strip()
    assert table == config_table(Settings())
    assert len(documented()) == len(Settings.flat()) > 150


def test_every_documented_variable_lands_in_its_field(tmp_path: Path) -> None:
    """Each TIDEGATE_* variable of the docs, set to a valid non-default value (all at once),
    is loaded into its field: an engine kind's ``<kind>_<field>`` into ``engine(KIND).<field>``,
    the rest into the Settings field of that name."""
    defaults = Settings()
    flat = Settings.flat()
    environ = {}
    for variable in documented():
        name = variable.removeprefix("TIDEGATE_").lower()
        assert name in flat, f"{variable} is documented but is no setting"
        environ[variable] = _value(variable, flat[name].hint, defaults.value(name), tmp_path)
    s = Settings.load(environ=environ)
    kinds = {row.name: row for row in KINDS}
    for variable, raw in environ.items():
        name = variable.removeprefix("TIDEGATE_").lower()
        head, _, rest = name.partition("_")
        row = kinds.get(head)
        if row is not None and rest in {f.name for f in dataclasses.fields(row.config)}:
            got = getattr(s.engine(row), rest)
            assert not hasattr(s, name), f"{name} is both flat and in {row.name}'s config"
        else:
            got = getattr(s, name)
        assert got == s.value(name) != defaults.value(name), (variable, raw, got)
        if isinstance(got, (int, float, str)) and not isinstance(got, bool):
            assert str(got) == raw or float(got) == float(raw), (variable, raw, got)
    # spot checks of the nested shape, spelled out
    assert s.engine(VAD).runtime == "triton" and s.engine(ASR).deadline_s == 5.0
    assert s.engine(VISION).model == "mtcnn" and s.engine(VISION).max_batch_items == 9
    assert s.engine(LLM).providers == ("a=http://127.0.0.1:8081", "b=http://10.0.0.9:8000")
    assert s.engine(LLM).provider_standby_every_tokens == 1 and s.engine(TTS).deadline_s == 5.0
    assert s.asr_partial_interval_s == 0.5 and s.llm_default_max_tokens == 257


def test_docs_name_only_settings() -> None:
    """Every TIDEGATE_* name the README and docs mention is a setting (or a variable of the
    test and build harness, or the TIDEGATE_RATE_* family's prefix)."""
    harness = {"TIDEGATE_BUILD_CACHE", "TIDEGATE_NETWORK_MODE", "TIDEGATE_NGINX_CONF",
               "TIDEGATE_TEST_TIMEOUT_FACTOR", "TIDEGATE_TLS_DIR", "TIDEGATE_RATE"}  # fmt: skip
    known = set(documented()) | harness
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for name in re.findall(r"TIDEGATE_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            assert name in known, f"{path.name} names {name}, which is no setting"


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"TIDEGATE_VAD_THRESHOLD": "1.5"}, "vad: threshold must be in"),
        ({"TIDEGATE_VAD_MAX_BATCH_ITEMS": "0"}, "vad_max_batch_items must be at least 1"),
        ({"TIDEGATE_ASR_DEADLINE_S": "soon"}, "TIDEGATE_ASR_DEADLINE_S: cannot use 'soon'"),
        ({"TIDEGATE_VISION_MODEL": "yolo"}, "vision_model must be one of"),
        ({"TIDEGATE_TTS_RUNTIME": "tpu"}, "tts_runtime must be one of"),
        ({"TIDEGATE_LLM_PROVIDERS": "a=http://x"}, "llm_providers is set but llm_runtime"),
        ({"TIDEGATE_ENGINES": "vad,aec"}, "unknown engine 'aec'"),
    ],
)
def test_bad_engine_values_are_named(environ: dict[str, str], words: str) -> None:
    """A bad engine setting is refused with its name (or its kind and field)."""
    with pytest.raises(ConfigError, match=words):
        Settings.load(environ=environ)


def test_unknown_names() -> None:
    """An unknown setting in the file or as an override is refused by name; an unknown
    TIDEGATE_* environment variable is ignored (the test harness has its own)."""
    with pytest.raises(ConfigError, match="unknown setting 'vad_treshold'"):
        Settings.load(environ={}, vad_treshold=0.6)
    assert Settings.load(environ={"TIDEGATE_VAD_TRESHOLD": "0.6"}) == Settings.load(environ={})


def test_engine_tables_in_the_file(tmp_path: Path) -> None:
    """The file takes an engine kind's settings flat or as its table; the environment wins."""
    path = tmp_path / "t.toml"
    path.write_text("asr_deadline_s = 4.0\n[vad]\nthreshold = 0.6\nruntime = 'triton'\n")
    s = Settings.load(environ={"TIDEGATE_CONFIG": str(path), "TIDEGATE_VAD_RUNTIME": "onnx"})
    assert (s.engine(ASR).deadline_s, s.engine(VAD).threshold) == (4.0, 0.6)
    assert s.engine(VAD).runtime == "onnx"
    path.write_text("[vad]\ntreshold = 0.6\n")
    with pytest.raises(ConfigError, match="unknown setting 'vad_treshold'"):
        Settings.load(environ={"TIDEGATE_CONFIG": str(path)})


def test_replace_by_public_name_and_hashable() -> None:
    """``replace`` takes the public names (tests and tools build settings so); settings stay
    hashable (media config is cached by them) and compare by value."""
    s = Settings().replace(vad_threshold=0.7, port=9)
    assert s.engine(VAD).threshold == 0.7 and s.port == 9 and s.value("vad_threshold") == 0.7
    assert Settings().engine(VAD).threshold == 0.5
    assert hash(s) == hash(Settings().replace(vad_threshold=0.7, port=9))
    assert s == Settings().replace(port=9, vad_threshold=0.7) != Settings()
