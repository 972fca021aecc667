"""fairseq-hydra-train configs of the papers' recipes: configs/<recipe>.yaml, generated (never edited by hand) by
`python -m kvattn_fairseq experiments hydra-configs --out configs`; a test keeps the committed ones in sync."""
import os
from typing import Dict, List, Sequence

from ..papers import RECIPES, paper_file
from ..util.errors import OneLineError
from ..util.io import write_atomic
from .train import groups, positions_of, recipe, train_args

# fairseq's hydra path (fairseq_cli/hydra_train.py) composes the named YAML over the FairseqConfig schema.  A legacy
# (argparse) model such as kvattn_transformer / kvattn_lm has no dataclass, so its `model:` node is a plain dict with
# `_name: <arch>` and any keys; fairseq's models.build_model then runs the architecture function on it (filling what
# the YAML leaves out) and the plugin's build_model turns it into a Namespace.  The YAML therefore holds exactly the
# flags of the recipe, each under the config group that owns it, with its value as fairseq's parser types it.
_GROUPS = ("common", "common_eval", "distributed_training", "dataset", "optimization", "checkpoint", "bmuf",
           "generation", "eval_lm", "interactive", "ema")
_REGISTRY_GROUPS = ("task", "criterion", "optimizer", "lr_scheduler")
HYDRA_HEADER = """\
# {name}: {summary}
# Generated from its recipe in {paper} (edit the recipe, not this file) by
#   python -m kvattn_fairseq experiments hydra-configs --out configs{tiny}
# Source: {source}
# Data: {data}
#
#   fairseq-hydra-train --config-dir configs --config-name {name} \\
#       common.user_dir=$(python -m kvattn_fairseq --user-dir) task.data=DATA_BIN checkpoint.save_dir=SAVE_DIR
#
# task.data is required (though fairseq's hydra path does not enforce its `???`); checkpoint.save_dir defaults to
# fairseq's `checkpoints`, and hydra's record of the run (.hydra/, hydra_train.log) goes there too.
# Any value can be overridden the hydra way, e.g. optimization.max_update=1000 model.decoder_attention_type=kv
# (the model's attention kinds are listed explicitly so that they can be); a key that is not in this file takes a
# leading +, e.g. +model.memsizer_self_slots=8.
"""


TASK_KEYS_THE_MODEL_READS = {"translation": ("max_source_positions", "max_target_positions"),
                             "language_modeling": ("tokens_per_sample", "max_target_positions")}


def parse_training_args(argv: Sequence[str]):
    """(args, parser) as fairseq-train parses `argv`; the plugin is imported here, so --user-dir is optional."""
    from fairseq import options

    import kvattn_fairseq  # noqa: F401  (registers the plugin's models)

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, list(argv))
    return args, parser


def _dests(parser) -> Dict[str, str]:
    return {flag: action.dest for flag, action in parser._option_string_actions.items()}


def _owner(dest: str, task: str, args, model_dests) -> str:
    """The config group a parsed option belongs to (interpolated fields, like lr_scheduler.lr, are not owners)."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    def own(dc) -> bool:
        fields = getattr(dc, "__dataclass_fields__", {})
        return dest in fields and not str(fields[dest].default).startswith("${")

    defaults = FairseqConfig()
    for group in _GROUPS:
        if own(getattr(defaults, group)):
            return group
    if own(TASK_DATACLASS_REGISTRY.get(task)):
        return "task"
    for group in REGISTRIES:
        choice = getattr(args, group, None)
        if choice is not None and own(REGISTRIES[group]["dataclass_registry"].get(choice)):
            return group
    if dest in model_dests:
        return "model"
    raise OneLineError(f"no config group owns {dest!r}")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def hydra_config(name: str, tiny: bool = False) -> Dict[str, Dict]:
    """The experiment as a fairseq-hydra-train config (nested dict, groups in FairseqConfig order)."""
    exp = recipe(name)
    arch, flags, _ = train_args(name, tiny=tiny)
    placeholder = ["DATA_BIN", "--task", exp.task, "--arch", arch, "--save-dir", "SAVE_DIR"]
    args, parser = parse_training_args(placeholder + list(flags))
    dests = _dests(parser)
    model_dests = {a.dest for g in parser._action_groups if g.title == "Model-specific configuration"
                   for a in g._group_actions}
    from fairseq.registry import REGISTRIES

    cfg: Dict[str, Dict] = {}
    for flag, _values in groups(flags):
        dest = dests[flag]
        if dest in REGISTRIES:  # --optimizer adam etc.: the group's _name
            cfg.setdefault(dest, {})
            continue
        group = _owner(dest, exp.task, args, model_dests)
        cfg.setdefault(group, {})[dest] = _plain(getattr(args, dest))
    # the attention kind at every position, explicit so that hydra overrides can change it
    from ..modules.registry import position_dest

    for p in positions_of(arch):
        cfg.setdefault("model", {}).setdefault(position_dest(p), getattr(args, position_dest(p)))
    # Under fairseq-train a legacy model sees the whole flat namespace, task settings included: the translation
    # model takes its position limits from the task's, the language model its max_target_positions (else
    # tokens_per_sample).  Under hydra it sees only its own node, so those are linked to the task's here.
    for key in TASK_KEYS_THE_MODEL_READS.get(exp.task, ()):
        cfg.setdefault("model", {}).setdefault(key, "${task.%s}" % key)
    # task is an untyped node in FairseqConfig: `data` must be present for the task.data=... override to apply
    # (hydra refuses a new key without a leading +); `???` marks it as required, though fairseq's merge of the
    # task's dataclass replaces an unset ??? with None rather than refusing it
    cfg.setdefault("task", {})["data"] = "???"
    order = [*_GROUPS[:6], "task", "model", *_REGISTRY_GROUPS[1:], *[g for g in REGISTRIES if g not in
                                                                      _REGISTRY_GROUPS], *_GROUPS[6:]]
    out: Dict[str, Dict] = {}
    for group in order:
        # task, model, criterion, optimizer and lr_scheduler are always named (fairseq needs them); the other
        # registries (bpe, tokenizer, scoring) only when the experiment sets them
        named = group in ("task", "model", *_REGISTRY_GROUPS) or (group in REGISTRIES and group in cfg)
        if not named and group not in cfg:
            continue
        body = dict(cfg.get(group, {}))
        if named:
            choice = {"task": exp.task, "model": arch}.get(group) or getattr(args, group)
            body = {"_name": choice, **body}
        out[group] = body
    # hydra writes its record of the run (.hydra/config.yaml, overrides.yaml, hydra_train.log) next to the
    # checkpoints and, with chdir off, leaves the working directory alone (relative task.data / save_dir work)
    out["hydra"] = {"run": {"dir": "${checkpoint.save_dir}"}, "job": {"chdir": False}}
    return out


def hydra_yaml(name: str, tiny: bool = False) -> str:
    import yaml

    exp = recipe(name)
    body = yaml.safe_dump(hydra_config(name, tiny), sort_keys=False, default_flow_style=False, width=120)
    return HYDRA_HEADER.format(name=exp.name, paper=paper_file(name), summary=exp.summary, source=exp.source,
                               data=exp.data, tiny=" --tiny" if tiny else "") + body


def write_hydra_configs(out: str, tiny: bool = False, check: bool = False) -> List[str]:
    """Write (or, with check, compare) configs/<recipe>.yaml for every recipe; returns the stale ones."""
    stale = []
    if not check:
        os.makedirs(out, exist_ok=True)
    for name in RECIPES:
        path = os.path.join(out, f"{name}.yaml")
        text = hydra_yaml(name, tiny)
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current != text:
            stale.append(path)
            if not check:
                write_atomic(path, text)
    return stale


