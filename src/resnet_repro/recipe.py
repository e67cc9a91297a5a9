"""Reading a run's configuration, and writing the resolved one: YAML recipes (a key given twice refused), their
``profiles:``, ``--set section.key=value`` overrides, configs saved in checkpoints; then validation (config.py).

Each value is converted to its field's declared type here, naming the key and where the value came from (file,
profile or --set) when it cannot be; unknown sections and keys are errors (a typo must never silently fall back
to a default). Which profile applies is the caller's choice (runtime.load_recipe reads the hardware): nothing
here reads the machine.
"""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml

from . import atomic
from .config import Config, ConfigError, field_types, validate


def _coerce(value, typ, key: str):
    """Convert a YAML/CLI value to the field's declared type, or raise naming the key."""
    origin = typing.get_origin(typ)
    if origin is Annotated:  # model.name: a str whose choices validate checks
        return _coerce(value, typing.get_args(typ)[0], key)
    if origin in (typing.Union, types.UnionType):  # data.workers, int | Literal["auto"]: the first that fits
        for inner in typing.get_args(typ):
            try:
                return _coerce(value, inner, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: cannot use {value!r} as {typ}")
    if origin is Literal:  # a string here; whether it is one of the choices is validate's job
        return _coerce(value, str, key)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):  # YAML reads `--set data.flip=1` as the int 1
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, bool):  # YAML reads `channels_last: true` as a bool; auto|true|false fields
                return "true" if value else "false"
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if origin is list:
            (inner,) = typing.get_args(typ)
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            elif isinstance(value, (int, float)):
                value = [value]  # a one-element list written as a scalar: `--set data.std=0.25`
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [_coerce(v, inner, key) for v in value]
    except (ValueError, TypeError, yaml.YAMLError):
        raise ConfigError(f"config key {key!r}: cannot use {value!r} as {getattr(typ, '__name__', typ)}") from None
    raise ConfigError(f"config key {key!r}: unsupported type {typ}")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, path: list, first: int, again: int):
        super().__init__(f"key {'.'.join(map(str, path))!r} is given twice (lines {first} and {again}); "
                         "keep one")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice: PyYAML silently keeps the last one, so a recipe
    could say one learning rate near the top and train with another set further down."""

    def construct_document(self, node):
        seen_nodes: set[int] = set()  # aliases share nodes: each is walked once (no blow-up on YAML bombs)
        stack = [(node, [])]
        while stack:
            n, path = stack.pop()
            if id(n) in seen_nodes:
                continue
            seen_nodes.add(id(n))
            if isinstance(n, yaml.MappingNode):
                lines: dict = {}
                for k, v in n.value:
                    if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                        if k.value in lines:
                            raise _DuplicateKey(path + [k.value], lines[k.value], k.start_mark.line + 1)
                        lines[k.value] = k.start_mark.line + 1
                    stack.append((v, path + [k.value if isinstance(k, yaml.ScalarNode) else "?"]))
            elif isinstance(n, yaml.SequenceNode):
                stack.extend((v, path + [i]) for i, v in enumerate(n.value))
        return super().construct_document(node)


def _yaml_load(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _apply(cfg: Config, section: str, key: str, value, where: str) -> None:
    sections = field_types(Config)
    if section not in sections:
        raise ConfigError(f"{where}: unknown config section {section!r}; known: {', '.join(sections)}")
    sub = getattr(cfg, section)
    types = field_types(type(sub))
    if key not in types:
        raise ConfigError(f"{where}: unknown config key '{section}.{key}'; known in {section}: {', '.join(types)}")
    try:
        setattr(sub, key, _coerce(value, types[key], f"{section}.{key}"))
    except ConfigError as e:  # the key alone does not say whether the file, its profile or a --set gave it
        raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                profile: str | typing.Callable[[Config], str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then one of its profiles (below), then ``section.key=value``
    overrides, then validation.

    A recipe may hold a top-level ``profiles:`` mapping of machine classes (``cpu``, ``cpu_bf16``, ``cuda``) to
    partial configs: what depends on the machine, such as the epoch budget a 2-core laptop can afford.
    ``train.profile`` pinned (in the file or by --set) picks one; left at auto, ``profile`` does (a name, or a
    function of the config before any profile): the caller's choice, made where the hardware is read
    (runtime.load_recipe: the machine's class, or on a resume the run's recorded profile). The resolved config
    keeps the name and the values, and no ``profiles:`` section, so a saved config.yaml means the same run on any
    machine. A run folder's config.yaml also holds ``chosen_on:``, the hardware that made its choices: a record,
    skipped here."""
    raw = _read_recipe(path) if path is not None else {}
    profiles = raw.pop("profiles", None)
    raw.pop("chosen_on", None)
    cfg, origins = _build(raw, overrides, path)
    if profiles is not None:
        if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
            raise ConfigError(f"config file {path}: 'profiles' must map profile names to config sections")
        name = cfg.train.profile
        if name == "auto":
            if profile is None:
                raise ConfigError(f"config file {path}: train.profile is auto and nothing chose one of its profiles "
                                  f"({', '.join(profiles)}); pin one with --set train.profile=NAME")
            name = profile(cfg) if callable(profile) else profile
        if name not in profiles:
            raise ConfigError(f"config key 'train.profile': {name!r} is not a profile of {path}; it has "
                              f"{', '.join(profiles)}")
        cfg, origins = _build(raw, overrides, path, profile=(name, profiles[name]))
        cfg.train.profile = name
    # Without a `profiles:` section the name is only a record: a saved config.yaml keeps the profile applied.
    validate(cfg, origins)
    return cfg


def _read_recipe(path) -> dict:
    path = Path(path)
    if path.is_dir():
        hint = f" (a run folder's is {path / 'config.yaml'})" if (path / "config.yaml").is_file() else ""
        raise ConfigError(f"config file {path}: is a folder; give the YAML file{hint}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = _yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.end]!r}); "
                          "save it as UTF-8") from None
    except _DuplicateKey as e:
        raise ConfigError(f"config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
    if raw is None:  # an empty file would train every default (ResNet-50, 120 epochs): likely a failed copy
        raise ConfigError(f"config file {path}: empty (no sections); give a recipe, e.g. configs/fashion_mnist/"
                          "resnet20.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return raw


def _build(raw: dict, overrides: list[str] | None, path,
           profile: tuple[str, dict] | None = None) -> tuple[Config, dict[str, str]]:
    cfg = Config()
    origins: dict[str, str] = {}  # "section.key" -> where its value was set, for validation messages
    layers = [(raw, f"config file {path}")]
    if profile is not None:
        layers.append((profile[1], f"config file {path}, profile {profile[0]!r}"))
    for layer, where in layers:
        for section, values in layer.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: section {section!r} must be a mapping")
            for key, value in values.items():
                _apply(cfg, section, key, value, where)
                origins[f"{section}.{key}"] = where
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=0.2")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: config key '{dotted.strip()}': {value!r} is not a valid YAML "
                              "value (quote it, or write lists as [a, b])") from None
        _apply(cfg, section.strip(), key.strip(), parsed, f"--set {item!r}")
        origins[f"{section.strip()}.{key.strip()}"] = f"--set {item!r}"
    return cfg, origins


def config_from_dict(d: dict) -> Config:
    """Rebuild a Config saved with ``to_dict`` (checkpoints, resolved config files)."""
    cfg = Config()
    for section, values in d.items():
        for key, value in values.items():
            if (section, key) == ("data", "train_split"):  # saved before data.train_splits (one split)
                key, value = "train_splits", [value]
            _apply(cfg, section, key, value, "saved config")
    return cfg


def save_config(cfg: Config, path: Path, chosen_on: dict | None = None) -> None:
    """Written whole or not at all (atomic.py): a run folder's config.yaml is what --resume auto checks against.
    ``chosen_on``: the hardware facts that made the run's hardware-made choices (runtime.facts), kept as a record."""
    d = cfg.to_dict()
    if chosen_on is not None:
        d["chosen_on"] = chosen_on
    atomic.write_text(path, yaml.safe_dump(d, sort_keys=False), fsync=False)
