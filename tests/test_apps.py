"""The app registry and each app's option model (shared/apps.py): types and meaning, in-process;
the supervisor's side of it without the audio stack, in a subprocess."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import wave
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiogw.shared.apps import (
    BUILTIN_APPS,
    AgentOptions,
    AppOptionError,
    AppOptions,
    PlaybackOptions,
    app_spec,
    parse_app_options,
)
from audiogw.shared.audiosocket import AUDIO_RATES
from audiogw.shared.config import ConfigError, ExtensionConfig, load_config
from audiogw.shared.media_format import RATES
from audiogw.shared.wav import read_wav
from audiogw.shared.wav_header import WavError, probe_wav
from audiogw.worker.apps import App, AppContext, create_app

STALL = "audiogw.bench.stall_app:StallApp"


def write_wav(path: Path, rate: int = 8000, width: int = 2, channels: int = 1, frames: int = 80) -> Path:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(b"\0" * width * channels * frames)
    return path


def riff(encoding: int, channels: int, rate: int, bits: int, data: bytes = b"\0\0" * 8) -> bytes:
    fmt = struct.pack("<HHIIHH", encoding, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture
def prompt(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "prompt.wav")


def refusal(app: str, options: dict, base_dir: str = ".") -> AppOptionError:
    with pytest.raises(AppOptionError) as info:
        parse_app_options(app, options, base_dir)
    return info.value


# -- the registry -------------------------------------------------------------------
def test_every_builtin_resolves_to_an_app_class_whose_module_matches_the_reference():
    for name, spec in BUILTIN_APPS.items():
        app_class = spec.load()
        assert issubclass(app_class, App) and app_class.name == name
        assert spec.ref == f"{app_class.__module__}:{app_class.__qualname__}"
        assert issubclass(spec.options, AppOptions)


def test_stall_is_not_in_the_production_registry():
    assert "stall" not in BUILTIN_APPS
    assert "did you mean" not in str(refusal("stall", {}))
    assert "module:Class" in str(refusal("stall", {}))


def test_unknown_app_suggests_the_close_name():
    error = refusal("agnet", {})
    assert "unknown app 'agnet'; did you mean 'agent'?" in str(error) and error.option is None


@pytest.mark.parametrize("reference, reason", [
    ("audiogw.nowhere:App", "cannot import module audiogw.nowhere"),
    ("audiogw.bench.stall_app:Missing", "has no Missing"),
    ("json:dumps", "dumps is not an App subclass"),
    ("audiogw.shared.apps:AppSpec", "AppSpec is not an App subclass"),
    ("audiogw.worker.apps.base:AppContext", "AppContext is not an App subclass"),
    ("not a reference", "unknown app"),
    ("module:", "unknown app"),
])
def test_bad_references_are_refused_with_the_reason(reference, reason):
    assert reason in str(refusal(reference, {}))


def test_a_reference_to_a_builtin_class_uses_the_builtins_model():
    assert app_spec("audiogw.worker.apps.agent:AgentApp") is BUILTIN_APPS["agent"]
    assert "missing option(s) url" in str(refusal("audiogw.worker.apps.agent:AgentApp", {}))


# -- the common option: rate ----------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(app=st.sampled_from(["echo", "bridge", STALL]), rate=st.integers(min_value=-1, max_value=200_000))
def test_rate_is_auto_or_an_audiosocket_rate_for_every_app(app, rate):
    if rate in AUDIO_RATES.values():
        assert parse_app_options(app, {"rate": rate}, ".").rate_hz == rate
    else:
        error = refusal(app, {"rate": rate})
        assert error.option == "rate" and "option rate must be" in str(error) and "16000" in str(error)


def test_rate_defaults_to_auto_and_refuses_other_types():
    assert parse_app_options("echo", {}, ".").rate_hz == 0
    assert parse_app_options("echo", {"rate": "auto"}, ".").rate == "auto"
    for value in (True, 8000.0, "8000", [8000]):
        error = refusal("echo", {"rate": value})
        assert error.option == "rate", value


def test_unknown_options_name_the_option_and_the_known_ones():
    error = refusal("echo", {"colour": 1, "rate": 8000})
    assert str(error) == "app 'echo': unknown option(s) colour (known: rate)" and error.option == "colour"


# -- playback ------------------------------------------------------------------------
def test_playback_takes_a_playable_file_relative_to_the_base_dir(prompt, tmp_path):
    options = parse_app_options("playback", {"file": prompt.name, "loop": True}, str(tmp_path))
    assert isinstance(options, PlaybackOptions) and (options.file, options.loop) == (prompt.name, True)
    assert parse_app_options("playback", {"file": str(prompt)}, "/").loop is False


@pytest.mark.parametrize("content, reason", [
    (None, "No such file"),
    (b"not a wav at all", "not a usable WAV file"),
    (riff(0x0006, 1, 8000, 8), "0x0006 is not supported"),  # A-law
    (riff(0x0001, 1, 8000, 40), "40-bit PCM is not supported"),
    (riff(0x0003, 1, 8000, 16), "16-bit float is not supported"),
    (riff(0x0001, 0, 8000, 16), "bad # of channels"),
    (riff(0xFFFE, 1, 8000, 16), "EXTENSIBLE fmt chunk is too short"),
    (b"RIFF\x04\x00\x00\x00WAVE", "chunk missing"),
])
def test_playback_refuses_a_file_it_cannot_play(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    error = refusal("playback", {"file": "bad.wav"}, str(tmp_path))
    assert error.option == "file" and reason in str(error) and str(path) in str(error), str(error)


def test_playback_refuses_a_directory_and_needs_a_file(tmp_path):
    assert refusal("playback", {"file": "."}, str(tmp_path)).option == "file"
    error = refusal("playback", {})
    assert str(error) == "app 'playback': missing option(s) file" and error.option == "file"
    assert refusal("playback", {"file": 3}).option == "file"
    assert refusal("playback", {"file": "x.wav", "loop": "yes"}, str(tmp_path)).option == "loop"


@settings(max_examples=80, deadline=None)
@given(encoding=st.sampled_from([0x0001, 0x0003, 0x0006, 0xFFFE]), channels=st.integers(0, 70),
       rate=st.sampled_from([0, 1, 8000, 44100, 800_000]), bits=st.sampled_from([0, 8, 12, 16, 24, 32, 64]))
def test_the_probe_accepts_exactly_the_files_read_wav_plays(tmp_path_factory, encoding, channels, rate, bits):
    """One reader and one set of format checks: what the supervisor accepts, the worker plays."""
    path = tmp_path_factory.mktemp("wav") / "x.wav"
    frame = max(1, channels * bits // 8)
    path.write_bytes(riff(encoding, channels, rate, bits, b"\0" * frame * 4))
    try:
        probe_wav(path)
        probed = None
    except WavError as error:
        probed = str(error)
    try:
        read_wav(path, 8000)
        read = None
    except WavError as error:
        read = str(error)
    assert probed == read


# -- agent ---------------------------------------------------------------------------
def test_agent_defaults_and_typed_values():
    options = parse_app_options("agent", {"url": "wss://agent.example/media", "connect_timeout": 2}, ".")
    assert isinstance(options, AgentOptions)
    assert options.connect_timeout == 2.0 and isinstance(options.connect_timeout, float)
    assert (options.encoding, options.media_rate, options.headers, options.barge_in) == ("mulaw", 8000, {}, False)
    for encoding, rates in RATES.items():
        for media_rate in rates:
            parse_app_options("agent", {"url": "ws://x", "encoding": encoding, "media_rate": media_rate}, ".")


@pytest.mark.parametrize("options, option, text", [
    ({"url": "http://x"}, "url", "option url 'http://x' must start with ws:// or wss://"),
    ({"url": 5}, "url", "option url has the wrong type (int)"),
    ({"url": "ws://x", "encoding": "opus"}, "encoding", "encoding 'opus' is not one of l16, mulaw"),
    ({"url": "ws://x", "media_rate": 16000}, "media_rate", "mulaw runs at 8000 Hz, not 16000"),
    ({"url": "ws://x", "encoding": "l16", "media_rate": 44100}, "media_rate", "l16 runs at 8000, 16000, 24000 Hz"),
    ({"url": "ws://x", "connect_timeout": 0}, "connect_timeout", "must be greater than 0, not 0"),
    ({"url": "ws://x", "reconnect_max_delay": -1}, "reconnect_max_delay", "must be greater than 0"),
    ({"url": "ws://x", "max_buffer_seconds": 0.0}, "max_buffer_seconds", "must be greater than 0"),
    ({"url": "ws://x", "barge_in_threshold_dbfs": 3}, "barge_in_threshold_dbfs", "between -90 and 0, not 3"),
    ({"url": "ws://x", "barge_in": "yes"}, "barge_in", "wrong type (str)"),
    ({"url": "ws://x", "headers": {"x-key": 1}}, "headers", "wrong type"),
    ({"url": "ws://x", "headers": "x"}, "headers", "wrong type (str)"),
    ({"url": "ws://x", "fallback": "/nonexistent.wav"}, "fallback", "/nonexistent.wav: cannot read"),
    ({}, "url", "missing option(s) url"),
])
def test_agent_refusals_name_the_option_and_say_why(options, option, text):
    error = refusal("agent", options)
    assert error.option == option and text in str(error) and str(error).startswith("app 'agent': "), str(error)


@settings(max_examples=60, deadline=None)
@given(threshold=st.floats(min_value=-200, max_value=100, allow_nan=False))
def test_agent_barge_in_threshold_bounds(threshold):
    options = {"url": "ws://x", "barge_in_threshold_dbfs": threshold}
    if -90 <= threshold <= 0:
        assert parse_app_options("agent", options, ".").barge_in_threshold_dbfs == threshold
    else:
        assert refusal("agent", options).option == "barge_in_threshold_dbfs"


def test_agent_fallback_resolves_next_to_the_config(prompt, tmp_path):
    assert parse_app_options("agent", {"url": "ws://x", "fallback": prompt.name}, str(tmp_path)).fallback == prompt.name


# -- stall, outside the registry -------------------------------------------------------
def test_stall_app_by_reference_checks_its_options():
    app = create_app(STALL, AppContext(extension="1201", options={}))
    assert (app.stall_seconds, app.stall_every) == (0.3, 1.0)
    assert create_app(STALL, AppContext("1201", {"stall_seconds": 1, "stall_every": 0.5})).stall_seconds == 1.0
    for options, option in (({"stall_every": 0}, "stall_every"), ({"stall_seconds": -0.1}, "stall_seconds"),
                            ({"stall_seconds": 11}, "stall_seconds"), ({"stall_seconds": "0.3"}, "stall_seconds"),
                            ({"colour": 1}, "colour")):
        with pytest.raises(AppOptionError) as info:
            create_app(STALL, AppContext("1201", options))
        assert info.value.option == option


# -- the worker builds apps with typed options -----------------------------------------
def test_create_app_builds_each_builtin_with_its_typed_options(prompt, tmp_path):
    examples = {"echo": {"rate": 16000}, "bridge": {}, "playback": {"file": prompt.name, "loop": True},
                "agent": {"url": "ws://127.0.0.1:1/media", "encoding": "l16", "media_rate": 16000}}
    assert set(examples) == set(BUILTIN_APPS)
    for name, options in examples.items():
        app = create_app(name, AppContext("1201", options, base_dir=str(tmp_path)))
        assert type(app) is BUILTIN_APPS[name].load()
        assert isinstance(app.options, BUILTIN_APPS[name].options)
        for key, value in options.items():
            assert getattr(app.options, key) == value
    assert create_app("echo", AppContext("1201", {"rate": 16000})).rate == 16000
    assert create_app("agent", AppContext("1201", examples["agent"])).stream_format.rate == 16000


def test_create_app_refuses_like_the_supervisor(tmp_path):
    with pytest.raises(AppOptionError, match="unknown app 'karaoke'"):
        create_app("karaoke", AppContext("1201", {}))
    with pytest.raises(AppOptionError, match="option file cannot be used"):
        create_app("playback", AppContext("1201", {"file": "gone.wav"}, base_dir=str(tmp_path)))


def test_app_subclass_hooks_must_be_coroutines():
    with pytest.raises(TypeError, match="must be 'async def'"):
        class Bad(App):  # noqa: F841
            def run_leg(self, leg):  # type: ignore[override]
                return None


# -- config file and state-file entries go through the same check -------------------------
def test_config_file_refusals_name_the_option_key(tmp_path):
    path = tmp_path / "audiogw.toml"
    path.write_text('[[extension]]\nid = "1201"\nia_port = 40000\nretorno_port = 40001\n'
                    'app = "agent"\noptions = { url = "http://x" }\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "extension[0].options.url" and "must start with ws://" in info.value.reason
    path.write_text('[[extension]]\nid = "1201"\nia_port = 40000\nretorno_port = 40001\n'
                    'app = "playback"\noptions = { file = "missing.wav" }\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "extension[0].options.file" and str(tmp_path / "missing.wav") in info.value.reason
    write_wav(tmp_path / "missing.wav")
    assert load_config(path).extensions[0].options == {"file": "missing.wav"}


def test_defaults_options_are_checked_against_each_extensions_app(tmp_path):
    path = tmp_path / "audiogw.toml"
    path.write_text('[defaults]\napp = "agent"\noptions = { url = "ws://x" }\n'
                    '[[extension]]\nid = "1201"\nia_port = 40000\nretorno_port = 40001\n'
                    '[[extension]]\nid = "1202"\nia_port = 40002\nretorno_port = 40003\napp = "echo"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "extension[1].options.url" and "unknown option(s) url" in info.value.reason


def test_state_file_entries_are_checked_like_the_config_files(tmp_path):
    entry = {"id": "1201", "ia_port": 40000, "retorno_port": 40001, "app": "playback", "options": {"file": "p.wav"}}
    with pytest.raises(ConfigError) as info:
        ExtensionConfig.from_dict(entry, base_dir=str(tmp_path), source="state.json", key="added[0]")
    assert info.value.key == "added[0].options.file"
    write_wav(tmp_path / "p.wav")
    assert ExtensionConfig.from_dict(entry, base_dir=str(tmp_path)).options == {"file": "p.wav"}
    with pytest.raises(ConfigError) as info:
        ExtensionConfig.from_dict({**entry, "app": "audiogw.nowhere:App"}, base_dir=str(tmp_path))
    assert info.value.key == "extension.app" and "cannot import" in info.value.reason


# -- the supervisor's side: no audio stack ----------------------------------------------
def test_supervisor_validates_every_app_without_numpy_soxr_or_websockets(prompt, tmp_path):
    script = f"""
import json, sys
import audiogw.supervisor.commands
import audiogw.shared.config
from audiogw.shared.apps import BUILTIN_APPS, AppOptionError, parse_app_options
good = {{"echo": {{"rate": 8000}}, "bridge": {{}}, "playback": {{"file": "prompt.wav"}},
        "agent": {{"url": "ws://x", "fallback": "prompt.wav", "encoding": "l16", "media_rate": 24000}},
        {STALL!r}: {{"stall_seconds": 0.1}}}}
assert set(BUILTIN_APPS) <= set(good)
for app, options in good.items():
    parse_app_options(app, options, {str(tmp_path)!r})
refused = []
for app, options in (("playback", {{"file": "nope.wav"}}), ("agent", {{"url": "http://x"}}), ("stall", {{}})):
    try:
        parse_app_options(app, options, {str(tmp_path)!r})
    except AppOptionError as error:
        refused.append(error.option)
print(json.dumps({{"refused": refused, "loaded": [m for m in ("numpy", "soxr", "websockets") if m in sys.modules]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"refused": ["file", "url", None], "loaded": []}


def test_option_models_are_plain_structs():
    """msgspec Structs: frozen, unknown fields refused by the model itself too."""
    options = parse_app_options("echo", {}, ".")
    with pytest.raises(AttributeError):
        options.rate = 8000  # type: ignore[misc]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"colour": 1}, AppOptions)
