"""backout.toml: its model, its loader/validator, and the generator behind ``backout init``."""

from backout.config.load import find_config, load_config
from backout.config.model import (
    BackupsConfig,
    Config,
    DatabaseConfig,
    ProjectConfig,
    ReleasesConfig,
    RepositoryConfig,
    ServiceConfig,
    VerifyConfig,
    VolumeConfig,
)

__all__ = [
    "BackupsConfig",
    "Config",
    "DatabaseConfig",
    "ProjectConfig",
    "ReleasesConfig",
    "RepositoryConfig",
    "ServiceConfig",
    "VerifyConfig",
    "VolumeConfig",
    "find_config",
    "load_config",
]
