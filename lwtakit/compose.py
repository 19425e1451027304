"""Hydra composes the run config (issue 19); the project keeps its strict schema and one-line errors.

The schema (:class:`lwtakit.config.Config`) is stored in Hydra's ConfigStore; an experiment YAML becomes the primary
config: its ``defaults:`` entries pick group files of ``configs/`` (every group of :data:`~lwtakit.config.GROUPS` is
in the list, ``null`` where the experiment picks none, so ``GROUP=NAME`` always replaces rather than appends), and
its own keys come last (``_self_``). Command-line overrides use Hydra's grammar (``key=value``, ``GROUP=NAME``,
``key=1,2`` as a sweep under ``-m``). Hydra's errors, often several lines with a traceback, are reworded here into
one :class:`UserError` line naming the key, with the hints :func:`lwtakit.config._one_line_omegaconf_error` gives.
Hydra is imported inside the functions: ``train.py --help`` does not pay for it.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lwtakit.config import (
    CONFIG_DIR,
    GROUPS,
    Config,
    _one_line_omegaconf_error,
    _read_yaml,
    group_file,
    resolve_experiment,
    validate,
)
from lwtakit.errors import UserError

SCHEMA_NAME = "lwtakit_schema"
PRIMARY_NAME = "lwtakit_experiment"
HYDRA_VERSION_BASE = "1.3"
# Keys the run sets itself: given on the command line they would be silently replaced.
SET_BY_TRAIN = ("run_id", "arm_id")
_STORED: dict[str, DictConfig] = {}  # the schema as a config, made once per process


def primary_node(config: str | None) -> tuple[dict, str]:
    """The experiment ``config`` (a name in configs/experiment/, a YAML path, or None: the schema alone) as a Hydra
    primary config: a defaults list (schema, one entry per group, ``_self_``) and the experiment's own keys; and the
    file it came from."""
    path = resolve_experiment(config) if config else None
    data = _read_yaml(path) if path else {}
    choices: dict[str, str | None] = dict.fromkeys(GROUPS)
    for entry in data.pop("defaults", None) or []:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise UserError(f"each 'defaults' entry must be 'group: name', got {entry!r} ({path})")
        (group, name), = entry.items()
        if group not in GROUPS:
            raise UserError(f"unknown config group '{group}' in defaults of {path}; groups are {', '.join(GROUPS)}")
        group_file(group, str(name))  # the project's message for a missing file, not Hydra's search-path dump
        choices[group] = str(name)
    if path is not None:
        data.setdefault("experiment", path.stem)
    defaults = [SCHEMA_NAME, *({g: n} for g, n in choices.items()), "_self_"]
    return {"defaults": defaults, **data}, str(path or "schema defaults")


def register(config: str | None) -> str:
    """Store the schema and the experiment ``config`` in Hydra's ConfigStore; returns the experiment's file."""
    from hydra.core.config_store import ConfigStore

    node, source = primary_node(config)
    store = ConfigStore.instance()
    if SCHEMA_NAME not in _STORED:  # converting the schema costs a tenth of a second; it never changes
        store.store(name=SCHEMA_NAME, node=Config)
        _STORED[SCHEMA_NAME] = OmegaConf.structured(Config)
    store.store(name=PRIMARY_NAME, node=node)
    return source


def parse_overrides(overrides: list[str], multirun: bool) -> list:
    """Hydra's parse of ``overrides`` (its Override objects); a malformed one, or a sweep outside ``-m``, is one
    line. ``key`` alone (no ``=``) is refused with the project's message before Hydra sees it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' must look like key=value (e.g. trainer.max_epochs=3)")
    parser = OverridesParser.create()
    parsed = []
    for item in overrides:
        try:
            parsed += parser.parse_overrides([item])
        except OverrideParseException as exc:
            why = str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else str(exc)
            raise UserError(f"override '{item}' is malformed ({why}); write key=value, key=[a,b] for a list, "
                            "key=a,b (with -m) for a sweep, key='a,b' for a string with a comma") from None
    for override in parsed:
        if override.is_sweep_override() and not multirun:
            raise UserError(f"override '{override.input_line}' is a sweep; add -m (--multirun) to train every value, "
                            "write key=[a,b] for a list or key='a,b' for a string with a comma")
        if override.get_key_element() in SET_BY_TRAIN:
            raise UserError(f"{override.get_key_element()} is set by train.py; drop '{override.input_line}'")
    return parsed


def reword(exc: Exception, source: str) -> UserError:
    """One line for a Hydra composition error: the key and where it came from (command line or a config file)."""
    text = str(exc)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing and missing.group(1) in GROUPS + ("experiment",):
        try:
            group_file(missing.group(1), missing.group(2))
        except UserError as error:
            return error
    cause = exc.__cause__
    on_command_line = text.startswith(("Could not override", "Error merging override", "Could not append"))
    where = "command line" if on_command_line else source
    inside = re.match(r"In '([^']+)'", text)
    if inside and not on_command_line and inside.group(1) != PRIMARY_NAME:
        where = str(CONFIG_DIR / f"{inside.group(1)}.yaml")
    if isinstance(cause, OmegaConfBaseException):
        if "is not a ListConfig" in str(cause):
            key = getattr(cause, "full_key", "?")
            return UserError(f"config key '{key}' takes a list ({where}); write {key}=[a,b] (or {key}=[a] for one)")
        return _one_line_omegaconf_error(cause, where)
    first = text.splitlines()[0] if text else type(exc).__name__
    return UserError(f"bad config ({where}): {first}")


def compose_raw(config: str | None, overrides: list[str], multirun: bool = False) -> DictConfig:
    """Hydra's composition of the experiment ``config`` with ``overrides`` (one point of a sweep), unvalidated."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    parse_overrides(overrides, multirun)
    source = register(config)
    # Hydra keeps one global state; a composition inside a running sweep job uses a fresh one and puts it back.
    saved = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=HYDRA_VERSION_BASE):
            return compose(config_name=PRIMARY_NAME, overrides=task_overrides(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise reword(exc, source) from None
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def task_overrides(overrides: list[str]) -> list[str]:
    """The overrides of the run's config, without those of Hydra itself (``hydra.*``, ``hydra/launcher=...``)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra")]


def finish(composed: DictConfig) -> DictConfig:
    """The run config from a Hydra composition: the schema's struct config holding it, validated, with its arm id
    (:func:`lwtakit.arm.arm_id`) recorded, so that compare can group seeds into arms without being told."""
    from lwtakit.arm import arm_id

    if SCHEMA_NAME not in _STORED:
        _STORED[SCHEMA_NAME] = OmegaConf.structured(Config)
    data = OmegaConf.to_container(composed, resolve=True)
    data.pop("hydra", None)
    try:
        cfg = OmegaConf.merge(_STORED[SCHEMA_NAME], data)  # a new config; the stored schema is not changed
        OmegaConf.set_struct(cfg, True)
    except OmegaConfBaseException as exc:
        raise _one_line_omegaconf_error(exc, "composed config") from None
    validate(cfg)
    cfg.arm_id = arm_id(OmegaConf.to_container(cfg, resolve=True))
    return cfg


def compose_config(config: str | None = "default", overrides: list[str] | None = None) -> DictConfig:
    """The resolved run config: schema <- experiment (its groups, then its keys) <- overrides, by Hydra."""
    return finish(compose_raw(config, list(overrides or [])))

