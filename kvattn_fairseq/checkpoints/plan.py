"""The attention plan a checkpoint's weights were trained with, recorded in the checkpoint and checked on load.

Weights of one kind load into a model of another kind whenever the shapes happen to match (softmax and linear
attention share their projections), so `--model-overrides "{'decoder_attention_type': 'linear'}"` would silently
give another model.  Every checkpoint the plugin's models save carries `kvattn_plan` (per position: the kind of
each layer and each kind's options), taken from the model config before any override.  Loading compares it with the
plan the (overridden) config builds and refuses a difference in one line, unless the overrides hold
`'load_other_plan': True`.  `python -m kvattn_fairseq convert` is the way to change kinds; it records the new plan.
The checks run inside fairseq's loader and trainer through patches/attention_plan.py.
"""
import json
import logging
from typing import Any, Dict, Mapping, Optional

from ..util.errors import OneLineError
from . import config

KEY = "kvattn_plan"
OVERRIDE_FLAG = "load_other_plan"
logger = logging.getLogger(__name__)


class PlanMismatch(OneLineError):
    """A checkpoint's weights were trained with another attention plan than the model they would load into."""


def plan_record(model_cfg) -> Optional[Dict[str, Any]]:
    """{position: {"kinds": [kind per layer], "options": {kind: {option: value}}}} of the plugin model `model_cfg`
    builds (its architecture's defaults applied, as the build does); None for a model that is not the plugin's."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from ..models import attention_positions
    from ..models.layers import check_attention_args

    args = config.as_namespace(model_cfg)
    arch = config.arch(args)
    positions = attention_positions(arch)
    if positions is None or arch not in ARCH_CONFIG_REGISTRY:
        return None
    ARCH_CONFIG_REGISTRY[arch](args)
    if getattr(args, "no_cross_attention", False):
        positions = tuple(p for p in positions if p != "cross")
    plan = check_attention_args(args, positions)
    record = {p: {"kinds": list(plan[p].kinds), "options": {k: dict(v) for k, v in plan[p].options.items()}}
              for p in positions}
    # plain JSON values (tuples become lists): what torch.load(weights_only=True) reads back unchanged
    return json.loads(json.dumps(record, sort_keys=True, default=str))


def checkpoint_record(state: Mapping) -> Optional[Dict[str, Any]]:
    """The plan a checkpoint records; for one saved before plans were recorded, the plan its config builds."""
    if state.get(KEY) is not None:
        return state[KEY]
    try:
        return plan_record(config.section(state, "model"))
    except Exception:  # noqa: BLE001  (a config this code cannot rebuild: nothing recorded to compare)
        return None


def describe(record: Optional[Mapping]) -> str:
    if record is None:
        return "no plugin attention plan (a model that is not the plugin's)"
    from ..modules.plan import compact

    order = ("encoder", "decoder", "cross")
    return ", ".join(f"{p}={compact(record[p]['kinds'])}" for p in sorted(record, key=order.index))


def difference(trained: Mapping, built: Mapping) -> Optional[str]:
    """The first difference between two records, in words; None when they are the same plan."""
    from ..modules.plan import compact

    for position in [p for p in ("encoder", "decoder", "cross") if p in trained or p in built]:
        a, b = trained.get(position), built.get(position)
        if a is None or b is None:
            return f"{position} attention {'absent' if a is None else compact(a['kinds'])} in the checkpoint, " \
                   f"{'absent' if b is None else compact(b['kinds'])} here"
        if a["kinds"] != b["kinds"]:
            return f"{position} attention {compact(a['kinds'])} in the checkpoint, {compact(b['kinds'])} here"
        for kind in sorted(a["options"]):
            # only options both know: one added to a kind later is absent from older records, whose models behave
            # as its default
            for option in sorted(set(a["options"][kind]) & set(b["options"].get(kind, {}))):
                x, y = a["options"][kind][option], b["options"][kind][option]
                if x != y:
                    return f"{position} {kind} option {option} {x!r} in the checkpoint, {y!r} here"
    return None


def check_on_load(path: str, state: Mapping, model_cfg_after_overrides, allowed: bool) -> None:
    """Refuse to load `state` (read from `path`) into the model the overridden config would build, when the plans
    differ."""
    trained = state.get(KEY)
    if trained is None:
        return
    built = plan_record(model_cfg_after_overrides)
    diff = difference(trained, built) if built is not None else "not a plugin model here"
    if diff is None:
        return
    if allowed:
        logger.warning(f"{path}: loading weights trained with another attention plan on purpose "
                       f"('{OVERRIDE_FLAG}': True): {diff}")
        return
    raise PlanMismatch(f"--model-overrides: {path} was trained with {describe(trained)} ({diff}); its weights do "
                       f"not make that model. Change kinds with python -m kvattn_fairseq convert, or add "
                       f"'{OVERRIDE_FLAG}': True to --model-overrides to load them anyway")


def check_for_training(path: str, state: Mapping, built: Mapping) -> None:
    trained = state.get(KEY)
    diff = difference(trained, built) if trained is not None else None
    if diff is not None:
        raise PlanMismatch(f"{path} was trained with {describe(trained)} but this fairseq-train run builds "
                           f"{describe(built)} ({diff}; the --*-attention-type flags and kinds' options): convert it "
                           f"with python -m kvattn_fairseq convert and pass the result to --finetune-from-model")
