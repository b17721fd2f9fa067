"""Loading and validating config files outside Snakemake (backbone specs, tests, notebooks)."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


class ConfigError(ValueError):
    pass


def validate(cfg: dict, schema_path, source: str = "config") -> dict:
    schema = yaml.safe_load(Path(schema_path).read_text())
    try:
        jsonschema.validate(cfg, schema)
    except jsonschema.ValidationError as e:
        key = ".".join(str(p) for p in e.absolute_path) or "<top level>"
        raise ConfigError(f"{source}: key {key}: {e.message}") from None
    return cfg


def load_backbone_config(path, schema_path=CONFIG_DIR / "backbone_schema.yaml", **overrides) -> dict:
    """A `config/backbones/*.yaml` spec, validated; `overrides` replace top-level keys (e.g. pretrained)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: backbone config not found")
    cfg = yaml.safe_load(path.read_text()) or {}
    cfg.update(overrides)
    return validate(cfg, schema_path, source=str(path))
