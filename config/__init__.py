"""Typed settings of a SayIt node, read once at start."""

from config.profiles import LANGUAGES, LanguageProfile, load_profiles
from config.settings import (
    ApiSettings,
    ConfigError,
    EngineSettings,
    Limits,
    QueueSettings,
    Settings,
    SilenceSettings,
    WorkerMode,
    load_settings,
)

__all__ = [
    "LANGUAGES",
    "ApiSettings",
    "ConfigError",
    "EngineSettings",
    "LanguageProfile",
    "Limits",
    "QueueSettings",
    "Settings",
    "SilenceSettings",
    "WorkerMode",
    "load_profiles",
    "load_settings",
]
