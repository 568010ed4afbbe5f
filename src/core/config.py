"""Config checks and display: typed overrides, a chosen experiment, a printed config tree."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from src.core.errors import ConfigError
from src.core.resolvers import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "configs"


def available(group: str) -> list[str]:
    """Names of the configs in a group folder (``experiment`` → ``["digits", ...]``)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def require_experiment(cfg: DictConfig) -> None:
    """Fail with the list of experiments when none was chosen."""
    if not cfg.get("data") or not cfg.get("model"):
        raise ConfigError(
            "no experiment chosen (data and model are unset)",
            f"pass experiment=<name>, one of {available('experiment')}",
        )


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the ``???`` values in a plain (unresolved) config container."""
    if isinstance(node, dict):
        items = ((f"{prefix}{k}", v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((f"{prefix[:-1]}[{i}]", v) for i, v in enumerate(node))
    else:
        return []
    found = []
    for key, value in items:
        if value == "???":
            found.append(key)
        else:
            found += _missing_keys(value, f"{key}.")
    return found


def require_values(cfg: DictConfig) -> None:
    """Fail, naming every key, when the chosen configs leave mandatory values (``???``) unset.

    Checked on the unresolved config: resolving would stop at the first interpolation that
    reads a missing value (``root: ${paths.data_dir}/${data.name}``) with a traceback.
    """
    plain = OmegaConf.to_container(cfg, resolve=False)
    missing = sorted(k for k in _missing_keys(plain) if not k.startswith("hydra."))
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no value (??? in the chosen configs)",
            "pass " + " ".join(f"{k}=<value>" for k in missing) + " on the command line",
        )


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), type(value).__name__)


def _compatible(default: Any, new: Any) -> bool:
    if default is None or new is None:
        return True
    if isinstance(default, bool):
        return isinstance(new, bool)
    if isinstance(default, int):
        return isinstance(new, int) and not isinstance(new, bool)
    if isinstance(default, float):
        return isinstance(new, int | float) and not isinstance(new, bool)
    if isinstance(default, list | tuple):
        return isinstance(new, list | tuple)
    if isinstance(default, dict):
        return isinstance(new, dict)
    return True  # strings accept numbers: a run name or path may be all digits


def _groups() -> set[str]:
    """Config groups: Hydra's current choices plus every folder of configs/ (multi-select
    groups such as ``callbacks=[default,ema]`` do not appear among the choices)."""
    choices = set(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else set()
    folders = {str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*") if p.is_dir()}
    return choices | folders


def check_override_types(cfg: DictConfig, base: DictConfig, overrides: list[str]) -> None:
    """Reject value overrides whose type does not match the config's own value.

    Args:
        cfg: The composed config (with overrides).
        base: The same config composed with only the config-group overrides, i.e. the values
            the user's value overrides replaced.
        overrides: The command-line overrides (``key=value`` strings).

    Raises:
        ConfigError: Naming the key, the expected type and the default value.
    """
    groups = _groups()
    for ov in OverridesParser.create().parse_overrides(overrides):
        key = ov.key_or_group
        if ov.is_delete() or key in groups or key.startswith("hydra") or ov.is_sweep_override():
            continue
        node_parent, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(base, node_parent) if node_parent else base
        if not isinstance(parent, DictConfig) or leaf not in parent or OmegaConf.is_interpolation(parent, leaf):
            continue
        default = OmegaConf.to_container(parent, resolve=False).get(leaf)
        if isinstance(default, str) and default.startswith("${"):
            continue
        new = ov.value()
        if not _compatible(default, new):
            raise ConfigError(
                f"override {ov.input_line!r}: {key} expects {_type_name(default)} "
                f"(default {default!r}), got {_type_name(new)} {new!r}",
                f"pass {key}=<{_type_name(default)}>",
            )


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def group_overrides(overrides: list[str]) -> list[str]:
    """The overrides that pick configs of a group (``experiment=digits``, ``trainer=cpu``)."""
    groups = _groups()
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if o.key_or_group in groups]


def print_config_tree(cfg: DictConfig) -> None:
    """Print the resolved config as a rich tree, one branch per top-level section."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    order = ["data", "model", "callbacks", "logger", "trainer", "paths", "extras"]
    keys = order + [k for k in cfg if k not in order]
    for key in keys:
        if key not in cfg:
            continue
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key), style="bold").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
