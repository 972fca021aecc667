"""Convert a trained fairseq `transformer` / `transformer_lm` (or one of the plugin's models) into the plugin's model
of the same sizes with other attention kinds, carrying every weight over that keeps its meaning.

    python -m kvattn_fairseq convert --checkpoint IN.pt --out OUT.pt --decoder-attention-type memsizer*5,softmax
    python -m kvattn_fairseq convert --model-flags OUT.pt    # the fairseq-train flags that rebuild OUT.pt's model

Embeddings, positions, FFNs, layer norms, the output projection and every attention whose kind does not change are
copied; each new attention starts from the softmax attention it replaces through its kind's mapping
(`init_from_softmax`; docs/conversion.md), or keeps its own initialisation where no mapping keeps a meaning.
OUT.pt is an ordinary checkpoint: fairseq-generate and fairseq-eval-lm load it with the plugin's --user-dir, and
`fairseq-train --finetune-from-model OUT.pt` with the flags `--model-flags` prints (a finetune builds its model
from its own command line, so the sizes must be given again).  Training state is reset (no optimizer state,
update 0); extra_state["kvattn_conversion"] records the source's full path and what each attention got, and
kvattn_plan the new attention plan (plan.py).
"""
import argparse
import copy
import os
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from omegaconf import OmegaConf, open_dict

from . import config
from ..models import FAIRSEQ_COUNTERPARTS, attention_positions, building, model_of
from ..modules.registry import POSITION_FLAGS, POSITIONS, AttentionConfigError, add_attention_args, position_dest
from ..util.errors import OneLineError
from ..util.io import write_atomic

# the model a checkpoint holds -> the plugin model it converts to: fairseq's own, or the same plugin model
TARGETS = {**FAIRSEQ_COUNTERPARTS, **{plugin: plugin for plugin in FAIRSEQ_COUNTERPARTS.values()}}


class ConversionError(OneLineError, ValueError):
    """One line naming the flag or file to fix."""


# --- reading the source --------------------------------------------------------------------------------------------
def load_source(path: str, flag: str = "--checkpoint") -> Tuple[dict, argparse.Namespace, str]:
    """The checkpoint, its model args as a Namespace, and the plugin model to convert it to."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise ConversionError(f"{flag}: no such file: {path}")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as e:  # noqa: BLE001  (the unsafe-checkpoint refusal is already one line)
        first = f"no {e} entry" if isinstance(e, KeyError) else (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(f"{flag}: cannot read {path} as a fairseq checkpoint: {first}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or state.get("cfg") is None:
        raise ConversionError(f"{flag}: {path} is not a fairseq checkpoint (no model weights and config)")
    args = config.model_args(state)
    if args is None:
        raise ConversionError(f"{flag}: {path} has no model config")
    arch = config.arch(args)
    model = model_of(arch) or arch
    if model not in TARGETS:
        raise ConversionError(f"{flag}: {path} holds a {model!r} model (arch {arch!r}); convert reads fairseq's "
                              f"transformer and transformer_lm and the plugin's kvattn_transformer and kvattn_lm")
    _dataclass_defaults(args, model)
    return state, args, TARGETS[model]


def _dataclass_defaults(args: argparse.Namespace, model: str) -> None:
    """A config-driven model (fairseq's transformer_lm) took what its config omits from its dataclass, whose
    defaults differ from the architecture functions' (post-norm layers, 512-wide input and output embeddings):
    make them explicit, so that the plugin's model is built the same."""
    import dataclasses

    from fairseq.models import MODEL_DATACLASS_REGISTRY

    dc = MODEL_DATACLASS_REGISTRY.get(model)
    if dc is None or getattr(args, "arch", None) not in (None, model):  # a named architecture set them itself
        return
    defaults = dc()
    for f in dataclasses.fields(dc):
        value = getattr(defaults, f.name)
        if not hasattr(args, f.name) and not (isinstance(value, str) and "${" in value):
            setattr(args, f.name, value)


def _vocab_sizes(weights: Dict[str, torch.Tensor], path: str) -> Tuple[int, int]:
    """(source, target) vocabulary sizes, from the embeddings (the dictionaries are not needed for weights)."""
    def size(side):
        if f"{side}.embed_tokens.weight" in weights:
            return weights[f"{side}.embed_tokens.weight"].shape[0]
        bands = [v.shape[0] for k, v in weights.items()  # adaptive input: one embedding per frequency band
                 if k.startswith(f"{side}.embed_tokens.embeddings.") and k.endswith(".0.weight")]
        return sum(bands) or None

    tgt = size("decoder")
    if tgt is None:
        raise ConversionError(f"--checkpoint: cannot tell the vocabulary size of {path} from its embeddings")
    return size("encoder") or tgt, tgt


class _Task:
    def __init__(self, src, tgt):
        self.source_dictionary, self.target_dictionary = src, tgt


def _task(weights, path) -> _Task:
    src, tgt = _vocab_sizes(weights, path)
    d_tgt = building.make_dictionary(tgt - 4)  # fairseq's Dictionary starts with 4 special symbols
    return _Task(d_tgt if src == tgt else building.make_dictionary(src - 4), d_tgt)


def _build(args, task):
    from fairseq.models import build_model

    return build_model(copy.deepcopy(args), task).eval()


def source_model(state: dict, args: argparse.Namespace, path: str, flag: str = "--checkpoint"):
    """The checkpoint's own model with its weights (built without its data: dictionaries of the right sizes)."""
    try:
        model = _build(args, _task(state["model"], path))
        model.load_state_dict(state["model"], strict=True, model_cfg=args)
    except AttentionConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(f"{flag}: the weights of {path} do not fit its own config: {first}") from None
    return model


# --- the conversion ------------------------------------------------------------------------------------------------
def attention_sites(model):
    """(position, layer, state-dict prefix, module) of every attention of a fairseq transformer or LM."""
    encoder = getattr(model, "encoder", None)
    for i, layer in enumerate(getattr(encoder, "layers", None) or []):
        yield "encoder", i, f"encoder.layers.{i}.self_attn", layer.self_attn
    for i, layer in enumerate(model.decoder.layers):
        yield "decoder", i, f"decoder.layers.{i}.self_attn", layer.self_attn
        if getattr(layer, "encoder_attn", None) is not None:
            yield "cross", i, f"decoder.layers.{i}.encoder_attn", layer.encoder_attn


def _kinds(args, target: str) -> Dict[str, Tuple[str, ...]]:
    from ..models.layers import check_attention_args
    from ..modules.registry import apply_attention_defaults

    args = copy.deepcopy(args)
    positions = attention_positions(target)
    apply_attention_defaults(args, positions)  # a fairseq model: softmax everywhere
    plan = check_attention_args(args, positions)
    return {p: plan[p].kinds for p in positions}


Values = Union[argparse.Namespace, Mapping[str, Any]]  # the position and kind options, by destination


def conversion_values(flags: Values) -> Dict[str, Any]:
    """The position and kind options set in `flags` (parsed flags, or values by destination: decoder_attention_type,
    attention_window, ...); what is unset is left out."""
    from ..modules.registry import all_options

    get = flags.get if isinstance(flags, Mapping) else lambda dest: getattr(flags, dest, None)
    dests = [position_dest(p) for p in POSITIONS] + [opt.dest for opt in all_options()]
    return {dest: get(dest) for dest in dests if get(dest) is not None}


def conversion_flags(values: Mapping[str, Any]) -> List[str]:
    """The same values as flags of `python -m kvattn_fairseq convert` (to show a step by hand; never parsed back)."""
    from ..modules.registry import all_options

    flag_of = {**{position_dest(p): POSITION_FLAGS[p] for p in POSITIONS},
               **{opt.dest: opt.flag for opt in all_options()}}
    return [tok for dest, value in values.items() for tok in (flag_of[dest], _flag_value(value))]


def new_args(source: argparse.Namespace, target: str, flags: Values) -> argparse.Namespace:
    """The source's model args with the plugin's model and the requested attention; unset flags keep the
    source's own setting (softmax for fairseq's models)."""
    from ..modules.registry import all_options

    flags = argparse.Namespace(**conversion_values(flags))
    args = copy.deepcopy(source)
    args._name = target
    args.arch = target
    if target == "kvattn_lm" and not getattr(source, "decoder_normalize_before", True):
        args.arch = "kvattn_lm_post_norm"  # fairseq's plain --arch transformer_lm: post-norm layers
    for position in POSITIONS:
        value = getattr(flags, position_dest(position), None)
        if value is not None:
            if position not in attention_positions(target):
                raise ConversionError(f"{POSITION_FLAGS[position]}: a language model has only decoder self-attention")
            setattr(args, position_dest(position), value)
    for opt in all_options():
        if getattr(flags, opt.dest, None) is not None:
            setattr(args, opt.dest, getattr(flags, opt.dest))
    return args


def convert(source_state: dict, source_args, target: str, args, path: str, seed: int = 1):
    """The converted model and a report: [(position, layer, old kind, new kind, what was carried over)]."""
    task = _task(source_state["model"], path)
    old = source_model(source_state, source_args, path)
    old_kinds = _kinds(source_args, target)
    new_kinds = _kinds(args, target)
    torch.manual_seed(seed)
    new = _build(args, task)
    src = old.state_dict()
    report, replaced = [], set()
    old_modules = {prefix: m for _, _, prefix, m in attention_sites(old)}
    for position, layer, prefix, module in attention_sites(new):
        before, after = old_kinds[position][layer], new_kinds[position][layer]
        if before == after:
            continue  # copied with everything else below
        replaced.add(prefix)
        carried = None
        if before == "softmax":
            try:
                softmax = old_modules[prefix].state_dict()
                carried = module.init_from_softmax(softmax) if hasattr(module, "init_from_softmax") else None
            except ValueError as e:
                raise ConversionError(f"{POSITION_FLAGS[position]}: layer {layer}'s {after} does not fit the "
                                      f"softmax attention it replaces: {e}") from None
        report.append((position, layer, before, after, carried))
    missing = []
    state = new.state_dict()
    for key, value in state.items():
        if any(key.startswith(p + ".") for p in replaced):
            continue
        if key not in src:
            missing.append(key)
        elif src[key].shape != value.shape:
            raise ConversionError(f"--checkpoint: {key} is {list(src[key].shape)} in {path} but "
                                  f"{list(value.shape)} in the converted model; sizes do not fit")
        else:
            state[key] = src[key]
    if missing:
        raise ConversionError(f"--checkpoint: the converted model needs {missing[0]} (and {len(missing) - 1} more), "
                              f"which {path} does not have")
    new.load_state_dict(state, strict=True)
    return new, report


def converted_checkpoint(source_state: dict, model, args, report, path: str) -> dict:
    """An ordinary fairseq checkpoint of `model`, with fresh training state."""
    cfg = copy.deepcopy(source_state["cfg"])
    with open_dict(cfg):
        cfg.model = args
    history = (source_state.get("optimizer_history") or [{}])[-1]
    from .plan import KEY, plan_record

    return {
        KEY: plan_record(args),
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "args": None,
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": history.get("criterion_name", "CrossEntropyCriterion"),
                               "optimizer_name": history.get("optimizer_name", "FairseqAdam"),
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "last_optimizer_state": None,
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2},
                        "kvattn_conversion": {"source": os.path.abspath(path), "sites": [
                            {"position": p, "layer": i, "from": a, "to": b,
                             "carried": list(c) if c is not None else None} for p, i, a, b, c in report]}},
    }


# --- the flags that rebuild a model --------------------------------------------------------------------------------
def _flag_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def model_flags(args: argparse.Namespace) -> List[str]:
    """fairseq-train flags that make `args`' model (one of the plugin's): --arch and each model setting that the
    architecture would not give by itself, found by parsing the flags back until nothing differs (defaults may
    follow other flags, e.g. --decoder-output-dim follows --decoder-embed-dim)."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    arch = config.arch(args)
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    actions = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "arch")]
    flags: List[str] = []
    for _ in range(4):
        rebuilt = building.parse_model_args(arch, *flags)
        # compared as flag text: fairseq's parser leaves some numbers (e.g. --decoder-output-dim) as strings
        differ = [a for a in actions if getattr(args, a.dest, None) is not None
                  and _flag_value(getattr(rebuilt, a.dest, None)) != _flag_value(getattr(args, a.dest))]
        if not differ:
            return ["--arch", arch] + flags
        for action in differ:
            value = getattr(args, action.dest)
            if isinstance(action, argparse._StoreTrueAction):
                if not value:
                    raise ConversionError(f"cannot express {action.dest}=False as a fairseq-train flag of {arch}")
                flags.append(action.option_strings[-1])
            else:
                flags += [action.option_strings[-1], _flag_value(value)]
    raise ConversionError(f"cannot express {', '.join(a.dest for a in differ)} as fairseq-train flags of {arch}")


def _shell(flags: List[str]) -> str:
    import shlex

    return " ".join(shlex.quote(f) for f in flags)


# --- command line --------------------------------------------------------------------------------------------------
SEED_MAX = 2 ** 63 - 1  # torch.manual_seed takes 64 bits


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {SEED_MAX}, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    from ..util.cli import ArgumentParser

    p = ArgumentParser(prog="python -m kvattn_fairseq convert", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", metavar="IN.pt", help="a trained fairseq transformer / transformer_lm, or a "
                                                            "kvattn_transformer / kvattn_lm")
    what.add_argument("--model-flags", metavar="CKPT", help="print the fairseq-train flags that rebuild the model "
                                                            "of a plugin checkpoint (e.g. a converted one), and exit")
    p.add_argument("--out", metavar="OUT.pt", help="where to write the converted checkpoint")
    p.add_argument("--seed", type=seed, default=1, help="seed of the initialisation of what is not carried over")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_attention_args(p, POSITIONS)
    return p


def converted_flags(source_args: argparse.Namespace, target: str, flags: Values) -> List[str]:
    """The fairseq-train flags of the model a conversion with `flags` makes from a model with `source_args`,
    without converting anything: a bad plan or option is one line here (the chains check their commands with it
    before any work)."""
    args = new_args(source_args, target, flags)
    _kinds(args, target)
    return model_flags(args)


def source_args_of(arch: str, flags) -> Tuple[argparse.Namespace, str]:
    """(model args, plugin model it converts to) of the model fairseq-train builds from `--arch ARCH FLAGS`, as
    load_source reads them from that model's checkpoint, less what the task fills in when it builds the model (the
    maximum positions; --share-all-embeddings' implied sharing), which it fills in again for the converted model:
    the chain of an experiment that trains its own teacher knows the converted model before the teacher exists."""
    args = building.parse_model_args(arch, *map(str, flags))
    model = model_of(arch) or arch
    if model not in TARGETS:
        raise ConversionError(f"--arch {arch}: convert reads fairseq's transformer and transformer_lm and the "
                              f"plugin's kvattn_transformer and kvattn_lm")
    _dataclass_defaults(args, model)
    return args, TARGETS[model]


def convert_file(checkpoint: str, out: str, flags: Values, seed: int = 1, force: bool = False) -> Dict:
    """Convert `checkpoint` into `out` with the position and kind options in `flags` (parsed flags, or values by
    destination); checks everything before writing, and writes atomically.  Returns the report: what each
    attention got, and the fairseq-train flags."""
    from ..util.io import check_output_file

    check_output_file(out, "--out", [("--checkpoint", checkpoint)], force=force)
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ConversionError(f"--out: no such directory: {os.path.dirname(out)}")
    state, source_args, target = load_source(checkpoint)
    args = new_args(source_args, target, flags)
    model, report = convert(state, source_args, target, args, checkpoint, seed)
    train_flags = model_flags(args)
    converted = converted_checkpoint(state, model, args, report, checkpoint)
    write_atomic(out, lambda tmp: torch.save(converted, tmp))  # never a half-written checkpoint under the final name
    return {"sites": report, "kept": sum(1 for _ in attention_sites(model)) - len(report), "flags": train_flags}


def report_lines(done: Dict, checkpoint: str, out: str) -> List[str]:
    """What convert_file did, as the command prints it."""
    from ..util.paths import USER_DIR

    lines = []
    for position, layer, before, after, carried in done["sites"]:
        what = ", ".join(carried) if carried else "own initialisation (no mapping from " + before + ")"
        lines.append(f"{position} layer {layer}: {before} -> {after}: {what}")
    return lines + [f"kept {done['kept']} attention modules and every other weight of {checkpoint}",
                    f"wrote {out}; finetune it with: fairseq-train DATA --user-dir {USER_DIR} "
                    f"--finetune-from-model {out} {_shell(done['flags'])} ..."]


def plugin_model_flags(path: str) -> List[str]:
    """--model-flags: the fairseq-train flags of the plugin model in `path`."""
    _, args, target = load_source(path, "--model-flags")
    model = model_of(config.arch(args))
    if model != target:
        raise ConversionError(f"--model-flags: {path} holds fairseq's own {model!r} model, whose flags are its own "
                              f"config; --model-flags reads the plugin's checkpoints (convert it first: --checkpoint "
                              f"{path} --out OUT.pt)")
    return model_flags(args)


def _given(p: argparse.ArgumentParser, a: argparse.Namespace, *besides: str) -> List[str]:
    """The flags given other values than their defaults, except `besides` (destinations)."""
    return [action.option_strings[-1] for action in p._actions
            if action.option_strings and action.dest not in ("help", *besides)
            and getattr(a, action.dest, None) != action.default]


def main(argv=None) -> int:
    from ..util.cli import run_main

    p = parser()
    a = p.parse_args(argv)

    def body() -> int:
        if a.model_flags:
            others = _given(p, a, "model_flags")
            if others:
                raise ConversionError(f"--model-flags: only prints the flags of a checkpoint and takes no other "
                                      f"flag (got {', '.join(others)}); to convert, use --checkpoint")
            print(_shell(plugin_model_flags(a.model_flags)))
            return 0
        if not a.out:
            raise ConversionError("--out: required with --checkpoint")
        done = convert_file(a.checkpoint, a.out, a, a.seed, a.force)
        print("\n".join(report_lines(done, a.checkpoint, a.out)))
        return 0

    return run_main(p.prog, body)

