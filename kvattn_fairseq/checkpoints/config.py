"""What a fairseq checkpoint says about its model and task, read one way whatever wrote it: a plain dict after
torch.load, an OmegaConf config after fairseq's own loader, or the legacy `args` Namespace of checkpoints older than
fairseq's dataclass configs."""
import argparse
import copy
from typing import Any, Mapping, Optional


def section(state: Mapping, name: str) -> Any:
    """The `name` section of the checkpoint's config ("model", "task", "dataset", ...), as stored; for "model", the
    legacy `args` when there is no config.  None when absent."""
    cfg = state.get("cfg") if isinstance(state, Mapping) else None
    found = cfg.get(name) if hasattr(cfg, "get") else None
    if found is None and name == "model" and isinstance(state, Mapping):
        found = state.get("args")
    return found


def value(config: Any, key: str) -> Any:
    """One setting of a section (a Namespace, a dict or an OmegaConf config); None when absent."""
    if isinstance(config, argparse.Namespace):
        return getattr(config, key, None)
    return config.get(key) if hasattr(config, "get") else None


def as_namespace(config: Any) -> Optional[argparse.Namespace]:
    """A copy of a section as the Namespace fairseq's legacy models are built from; None for anything else."""
    if config is None:
        return None
    if isinstance(config, argparse.Namespace):
        return copy.deepcopy(config)
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        return argparse.Namespace(**OmegaConf.to_container(config, resolve=True))
    if isinstance(config, Mapping):
        return argparse.Namespace(**copy.deepcopy(dict(config)))
    return None


def model_args(state: Mapping) -> Optional[argparse.Namespace]:
    """A copy of the checkpoint's model config as a Namespace, or None."""
    return as_namespace(section(state, "model"))


def arch(config: Any) -> Optional[str]:
    """The architecture a model config names (legacy configs say `arch`, dataclass ones `_name`)."""
    return value(config, "arch") or value(config, "_name")
