"""Settings: defaults, the seed's variables, TOML, clear errors for bad values, each setting declared once."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from config import ConfigError, Settings, WorkerMode, load_settings
from config.profiles import load_profiles
from config.settings import SettingSpec, declared, known_variables, sections
from sayit_actors.engines import TranscriptionOptions


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.port == 3000 and settings.worker_mode is WorkerMode.ALL
    assert settings.max_concurrent_chunks == 8 and settings.redis_url is None
    assert settings.limits.max_upload_bytes == 100 * 1024 * 1024
    assert settings.limits.sync_max_duration_s == 30 and settings.limits.sync_max_bytes == 10 * 1024 * 1024


def test_seed_variables_and_role_defaults() -> None:
    settings = load_settings(
        {"WORKER_MODE": "queue_only", "REDIS_URL": "redis://redis:6379/0", "WORKER_ID": "q1", "SAYIT_PORT": "3100"}
    )
    assert settings.worker_mode is WorkerMode.QUEUE_ONLY and settings.max_concurrent_chunks == 8
    assert settings.redis_url == "redis://redis:6379/0" and settings.worker_id == "q1" and settings.port == 3100
    assert load_settings({"MAX_CONCURRENT_CHUNKS": "6"}).max_concurrent_chunks == 6
    api = load_settings(
        {"SAYIT_CALLBACK_HOSTS": "Hooks.Example, 10.0.0.5", "SAYIT_CALLBACK_SECRET": "s", "SAYIT_RESULT_CACHE": "off"}
    ).api
    assert api.callback_hosts == ("hooks.example", "10.0.0.5") and api.callback_secret == "s"
    assert api.result_cache is False
    assert load_settings({"SAYIT_CORS_ORIGINS": "https://a.example, https://b.example"}).cors_origins == (
        "https://a.example",
        "https://b.example",
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"MAX_CONCURRENT_CHUNKS": "0"}, ["MAX_CONCURRENT_CHUNKS", ">= 1"]),
        ({"MAX_CONCURRENT_CHUNKS": "four"}, ["MAX_CONCURRENT_CHUNKS", "integer"]),
        ({"WORKER_MODE": "both"}, ["WORKER_MODE", "all, api_only, queue_only"]),
        ({"SAYIT_PORT": "70000"}, ["SAYIT_PORT", "65535"]),
        ({"REDIS_URL": "localhost:6379"}, ["REDIS_URL", "redis://"]),
        ({"SAYIT_ENGINE": "whisper.cpp"}, ["SAYIT_ENGINE", "faster-whisper, mlx"]),
        ({"SAYIT_SYNC_MAX_BYTES": "200000000"}, ["SAYIT_SYNC_MAX_BYTES", "SAYIT_MAX_UPLOAD_BYTES"]),
        ({"SAYIT_CONFIG": "/nonexistent/sayit.toml"}, ["SAYIT_CONFIG", "cannot be read"]),
        ({"SAYIT_RESULT_CACHE": "maybe"}, ["SAYIT_RESULT_CACHE", "true or false"]),
        ({"SAYIT_CALLBACK_HOSTS": "hooks.example/path"}, ["SAYIT_CALLBACK_HOSTS", "no scheme"]),
        ({"SAYIT_CALLBACK_HOSTS": "hooks.example"}, ["SAYIT_CALLBACK_HOSTS", "SAYIT_CALLBACK_SECRET"]),
        ({"SAYIT_VAD": "sometimes"}, ["SAYIT_VAD", "long, all, off"]),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env)
    for name in names:
        assert name in str(excinfo.value)


def test_toml_file_below_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "sayit.toml"
    path.write_text(
        'port = 3300\nmax_concurrent_chunks = 3\ncors_origins = ["https://x.example"]\n[profiles.ko]\nbeam_size = 8\n'
    )
    settings = load_settings({"SAYIT_CONFIG": str(path), "SAYIT_PORT": "3400"})
    assert settings.port == 3400 and settings.max_concurrent_chunks == 3
    assert settings.cors_origins == ("https://x.example",)
    assert settings.profiles["ko"].beam_size == 8 and settings.profiles["ko"].temperature == 0.2
    path.write_text("port = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({"SAYIT_CONFIG": str(path)})
    path.write_text("[profiles.fr]\nbeam_size = 2\n")
    with pytest.raises(ConfigError, match="unknown language"):
        load_settings({"SAYIT_CONFIG": str(path)})


def test_profiles_of_the_design_make_every_setting_take_effect() -> None:
    profiles = load_profiles()
    expected = {"ko": (0.2, 5, 2.0, 3), "en": (0.3, 5, 1.5, 3), "auto": (0.25, 3, 1.8, 2)}
    for name, (temperature, beam, patience, best_of) in expected.items():
        options = TranscriptionOptions.from_profile(profiles[name])
        # beam search (beam_size, patience) runs at temperature 0; the profile's temperature is the fallback
        assert options.temperatures[0] == 0.0 and options.temperatures[1] == temperature
        assert list(options.temperatures) == sorted(options.temperatures) and options.temperatures[-1] <= 1.0
        assert (options.beam_size, options.patience, options.best_of) == (beam, patience, best_of)
        assert options.condition_on_previous_text is True
    assert TranscriptionOptions.from_profile(profiles["auto"]).language is None
    assert TranscriptionOptions.from_profile(profiles["ko"]).language == "ko"


# --- each setting declared once: the field's metadata is the only place a variable is named --------

KINDS: list[tuple[str | None, type[Any]]] = [(None, Settings), *sections()]


def text_form(value: Any) -> str:
    """``value`` as a variable would give it ("" for None: an empty variable counts as unset)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def each_setting() -> list[tuple[str | None, str, SettingSpec]]:
    return [(part, name, spec) for part, kind in KINDS for name, spec in declared(kind)]


def value_of(settings: Settings, part: str | None, name: str) -> Any:
    return getattr(settings if part is None else getattr(settings, part), name)


def test_every_field_is_a_declared_setting() -> None:
    for part, kind in KINDS:
        specs = dict(declared(kind))
        for item in fields(kind):
            if item.name in specs:
                spec = specs[item.name]
                assert callable(spec.parse) and spec.parse.__doc__ and spec.doc, (kind.__name__, item.name)
            else:  # only Settings holds sections, and the profiles of the TOML file's tables
                assert part is None and item.name in {*dict(sections()), "profiles"}, (kind.__name__, item.name)
    names = [name for _, name, _ in each_setting()]
    variables = [spec.variable(name) for _, name, spec in each_setting()]
    assert len(set(names)) == len(names) and len(set(variables)) == len(variables)  # one flat TOML namespace
    assert known_variables() == {*variables, "SAYIT_CONFIG", "SAYIT_LOG_LEVEL"}
    assert {"WORKER_MODE", "WORKER_ID", "MAX_CONCURRENT_CHUNKS", "REDIS_URL", "SAYIT_PORT"} <= known_variables()


def test_every_variable_takes_its_defaults_text(tmp_path: Path) -> None:
    defaults = Settings()
    env: dict[str, str] = {}
    for part, name, spec in each_setting():
        env[spec.variable(name)] = text_form(value_of(defaults, part, name))
        if env[spec.variable(name)]:
            assert spec.parse(env[spec.variable(name)]) == value_of(defaults, part, name), name
    assert load_settings(env) == defaults
    path = tmp_path / "sayit.toml"  # the same under each setting's TOML name
    lines = [f"{name} = {json.dumps(text_form(value))}" for part, name, _ in each_setting()
             if (value := value_of(defaults, part, name)) is not None]  # fmt: skip
    path.write_text("\n".join(lines))
    assert load_settings({"SAYIT_CONFIG": str(path)}) == defaults


@pytest.mark.parametrize(
    ("part", "name", "spec"), [pytest.param(*each, id=each[2].variable(each[1])) for each in each_setting()]
)
def test_every_variable_is_read_and_a_bad_value_names_it(part: str | None, name: str, spec: SettingSpec) -> None:
    variable, bad = spec.variable(name), "-1x,*"
    try:
        settings = load_settings({variable: bad})
    except ConfigError as refused:
        assert variable in str(refused)
        if spec.secret:
            assert "-1x" not in str(refused)
    else:  # any text goes: it was read all the same
        assert value_of(settings, part, name) != value_of(Settings(), part, name), variable
