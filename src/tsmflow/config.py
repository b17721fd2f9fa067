"""Loading and validating workflow config files, in the Snakefile and outside Snakemake (tests, notebooks)."""
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


def extend(cfg: dict, path) -> dict:
    """A config with `extends: <file>` (relative to `path`'s folder) is that file's config, with this one's top-level
    keys in place of its own (a key replaces the whole block): a real backbone's config names only what differs from
    the default. Chains are followed; anything else is returned as it is."""
    base = cfg.get("extends")
    if not base:
        return cfg
    base_path = (Path(path).parent / base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: key extends: {base_path} is not a file")
    parent = extend(yaml.safe_load(base_path.read_text()) or {}, base_path)
    return {**parent, **{k: v for k, v in cfg.items() if k != "extends"}}


def load_config(path, schema_path=CONFIG_DIR / "schema.yaml") -> dict:
    """A workflow config file (with what it extends), validated: as the Snakefile reads it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return validate(extend(yaml.safe_load(path.read_text()) or {}, path), schema_path, source=str(path))
