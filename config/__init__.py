"""Typed settings of a SayIt node, read once at start."""

from config.profiles import LanguageProfile, load_profiles
from config.settings import (
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
