"""The fairseq-train command of a paper's recipe (kvattn_fairseq/papers), behind
`python -m kvattn_fairseq experiments` (commands/experiments.py) and scripts/train.sh.

`experiments train` prints the command, then runs it (the process becomes fairseq-train).  The command is

    fairseq-train DATA_BIN --user-dir PLUGIN --task TASK --arch ARCH --save-dir SAVE_DIR  <the recipe's flags>
                  <--kind placement>  <FLAGS after -->

and fairseq parses it with argparse, where a later occurrence of a flag overrides an earlier one, so FLAGS after `--`
override the recipe (e.g. `-- --max-tokens 2048 --update-freq 32 --distributed-world-size 4`).  A store-true flag of
the recipe (--fp16, --share-all-embeddings, ...) cannot be switched off that way (fairseq has no --no-X for them):
`--drop fp16` removes it from the recipe's flags instead.

--kind KIND puts KIND at every attention position of the recipe's model where the registry allows it and
fairseq's softmax attention where it does not (printed as a comment).  --tiny swaps in the tiny architecture of the
same model with the recipe's attention layout, and tiny limits (4 updates, small batches, no fp16, 2 validation
steps), so that the whole chain runs on a CPU in seconds.  Training resumes from SAVE_DIR/checkpoint_last.pt, as
fairseq always does.
"""
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from ..papers import RECIPES, Recipe
from ..papers.spec import flags as _flags
from ..util import proc
from ..util.errors import OneLineError

# --tiny: settings for every recipe.  A flag in TINY_REPLACE only changes a value the recipe sets; TINY_SET is
# always applied; TINY_DROP is removed.
TINY_REPLACE = _flags("--warmup-updates 1 --update-freq 1 --max-tokens 1024 --batch-size 16 --tokens-per-sample 64")
TINY_SET = _flags("--max-update 4 --max-valid-steps 2 --log-format simple --log-interval 1")
TINY_DROP = ("--fp16", "--fp16-init-scale", "--memory-efficient-fp16", "--bf16")
TINY_ARCH = {"kvattn_transformer": "kvattn_transformer_tiny", "kvattn_lm": "kvattn_lm_tiny",
             "kvattn_classifier": "kv_position_classifier"}


# --- flag lists -------------------------------------------------------------------------------------------------------
def groups(flags: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """['--a', '1', '--b'] -> [('--a', ['1']), ('--b', [])]"""
    out: List[Tuple[str, List[str]]] = []
    for tok in flags:
        if tok.startswith("--"):
            out.append((tok, []))
        elif not out:
            raise ValueError(f"value {tok!r} before any flag")
        else:
            out[-1][1].append(tok)
    return out


def _apply(flags: Sequence[str], replace: Sequence[str] = (), set_: Sequence[str] = (),
           drop: Sequence[str] = ()) -> List[str]:
    kept = [(f, v) for f, v in groups(flags) if f not in drop]
    index = {f: i for i, (f, _) in enumerate(kept)}
    for flag, values in groups(replace):
        if flag in index:
            kept[index[flag]] = (flag, values)
    for flag, values in groups(set_):
        if flag in index:
            kept[index[flag]] = (flag, values)
        else:
            index[flag] = len(kept)
            kept.append((flag, values))
    return [tok for flag, values in kept for tok in (flag, *values)]


def last_value(argv: Sequence[str], *names: str) -> Optional[str]:
    """The value argparse would keep for a flag given as `--f v` or `--f=v` (the last one wins)."""
    value = None
    for i, tok in enumerate(argv):
        for name in names:
            if tok == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif tok.startswith(name + "="):
                value = tok[len(name) + 1:]
    return value


# --- the plugin side: models, positions, kinds ------------------------------------------------------------------------
def model_of(arch: str) -> str:
    from .. import models

    return models.model_of(arch)


def positions_of(arch: str) -> Tuple[str, ...]:
    from ..models import attention_positions

    return attention_positions(arch)


def kind_placement(arch: str, kind: str) -> Tuple[List[str], List[str]]:
    """(flags, comment lines) putting `kind` at every position of `arch`'s model where the registry allows it and
    fairseq's softmax attention at the others, so that --kind K gives the same model whatever the experiment's own
    attention was."""
    from ..modules.registry import (ATTENTION_KINDS, DEFAULT_KIND, POSITION_FLAGS, POSITION_NAMES, kinds_at)

    if kind not in ATTENTION_KINDS:
        raise OneLineError(f"--kind: unknown attention kind {kind!r}; choose one of: "
                           f"{', '.join(sorted(ATTENTION_KINDS))}")
    positions = positions_of(arch)
    spec = ATTENTION_KINDS[kind]
    fits = [p for p in positions if p in spec.positions]
    if not fits:
        why = "; ".join(f"{POSITION_NAMES[p]}: {spec.unsupported.get(p, 'not implemented there')}" for p in positions)
        usable = sorted({k for p in positions for k in kinds_at(p)})
        raise OneLineError(f"--kind: {kind!r} fits no attention position of {arch} ({why}); "
                           f"choose one of: {', '.join(usable)}")
    flags, notes = [], []
    for p in positions:
        chosen = kind if p in fits else DEFAULT_KIND
        flags += [POSITION_FLAGS[p], chosen]
        if p in fits:
            notes.append(f"{POSITION_NAMES[p]}: {kind}")
        else:
            notes.append(f"{POSITION_NAMES[p]}: {DEFAULT_KIND} ({kind} cannot go there: "
                         f"{spec.unsupported.get(p, 'not implemented there')})")
    return flags, [f"--kind {kind}: " + "; ".join(notes)]


def attention_layout(arch: str) -> List[str]:
    """The flags that give another architecture of the same model `arch`'s attention: the kind at each position
    and every option of those kinds that differs from the kind's default."""
    from ..models.building import parse_model_args
    from ..modules.registry import ATTENTION_KINDS, POSITION_FLAGS, position_dest

    args = parse_model_args(arch)
    flags, used = [], []
    for p in positions_of(arch):
        kind = getattr(args, position_dest(p))
        flags += [POSITION_FLAGS[p], kind]
        used.append(ATTENTION_KINDS[kind])
    seen = set()
    for kind in used:
        for opt in kind.options:
            value = getattr(args, opt.dest, None)
            if opt.flag in seen or value is None or value == opt.default:
                continue
            seen.add(opt.flag)
            if isinstance(value, (tuple, list)):
                value = ",".join(str(v) for v in value)
            flags += [opt.flag, str(value)]
    return flags


# --- the command ------------------------------------------------------------------------------------------------------
@dataclass
class Command:
    argv: List[str]        # the full fairseq-train command line
    notes: List[str]       # what --kind / --tiny chose, one line each
    args: List[str] = field(default_factory=list)  # argv after the program

    def shell(self) -> str:
        return proc.shell(self.argv)

    def check(self) -> None:
        """Parse the arguments with fairseq-train's own parser, in this process: a flag fairseq-train would refuse
        (a bad attention plan included: the architecture checks it at parsing) is one line now, before any step
        runs or anything is removed."""
        import contextlib
        import io
        import logging

        from fairseq import options

        err = io.StringIO()
        quiet = logging.getLogger("fairseq.utils")  # "--user-dir ... has already been imported" (it has: here)
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                options.parse_args_and_arch(options.get_training_parser(), input_args=list(self.args))
        except SystemExit:
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            message = lines[-1].split("error: ", 1)[-1] if lines else "bad arguments"
            raise OneLineError(f"fairseq-train would refuse the command: {message}") from None
        finally:  # a bad attention plan is an AttentionConfigError, a OneLineError already
            quiet.setLevel(level)


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise OneLineError(f"unknown experiment {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]


def train_args(name: str, kind: Optional[str] = None, tiny: bool = False, extra: Sequence[str] = (),
               drop: Sequence[str] = ()) -> Tuple[str, List[str], List[str]]:
    """(arch, flags after --arch, notes) for a recipe: its flags (less `drop`), --tiny changes, --kind
    placement and the passthrough flags, in that order."""
    exp = recipe(name)
    arch, flags, notes = exp.arch, list(exp.flags), []
    drop = ["--" + f.lstrip("-") for f in drop]  # fp16, --fp16 and -fp16 all name --fp16
    if drop:
        table = {f for f, _ in groups(exp.flags)}
        unknown = [f for f in drop if f not in table]
        if unknown:
            raise OneLineError(f"--drop: {', '.join(unknown)} is not a flag of {name}'s recipe; its flags: "
                               f"{' '.join(f for f, _ in groups(exp.flags))}")
        flags = _apply(flags, drop=drop)
        notes.append(f"--drop: removed {' '.join(drop)} from the recipe's flags")
    kind_flags: List[str] = []
    if kind is not None:
        kind_flags, kind_notes = kind_placement(exp.arch, kind)
        notes += kind_notes
    if tiny:
        arch = TINY_ARCH[model_of(exp.arch)]
        layout = attention_layout(exp.arch)
        flags = _apply(flags, replace=TINY_REPLACE, set_=TINY_SET + exp.tiny, drop=TINY_DROP)
        flags = layout + flags
        notes.append(f"--tiny: --arch {arch} with {exp.arch}'s attention ({' '.join(layout)}), "
                     f"{' '.join(TINY_SET)}")
    return arch, flags + kind_flags + list(extra), notes


def build_command(name: str, data_bin: str, save_dir: str, kind: Optional[str] = None, tiny: bool = False,
                  extra: Sequence[str] = (), drop: Sequence[str] = ()) -> Command:
    from ..util.paths import USER_DIR

    exp = recipe(name)
    arch, flags, notes = train_args(name, kind, tiny, extra, drop)
    args = [data_bin, "--user-dir", USER_DIR, "--task", exp.task, "--arch", arch, "--save-dir", save_dir, *flags]
    return Command([*proc.fairseq_tool("fairseq-train"), *args], notes, args)


def check_data(name: str, data_bin: str, extra: Sequence[str] = ()) -> None:
    """DATA_BIN must exist and hold the dictionaries fairseq will open first (one-line errors, before anything
    runs).  DATA_BIN may be a colon-separated list of shards, as in fairseq; the dictionaries sit in the first."""
    exp = recipe(name)
    shards = [s for s in data_bin.split(":") if s]
    if not shards:
        raise OneLineError("DATA_BIN: empty path")
    for shard in shards:
        if not os.path.isdir(shard):
            raise OneLineError(f"DATA_BIN: {shard} is not a directory (the fairseq-preprocess output: {exp.data})")
    first = shards[0]
    if exp.task == "language_modeling":
        needed = ["dict.txt"]
    else:
        argv = list(exp.flags) + list(extra)
        src = last_value(argv, "--source-lang", "-s")
        tgt = last_value(argv, "--target-lang", "-t")
        if src is None or tgt is None:
            src, tgt = _infer_language_pair(first)
            if src is None:
                raise OneLineError(f"DATA_BIN: cannot infer the language pair from the files in {first}; "
                                   f"pass -- --source-lang S --target-lang T")
        needed = [f"dict.{src}.txt", f"dict.{tgt}.txt"]
    for fname in needed:
        if not os.path.isfile(os.path.join(first, fname)):
            raise OneLineError(f"DATA_BIN: {os.path.join(first, fname)} is missing "
                               f"(expected the fairseq-preprocess output: {exp.data})")


def _infer_language_pair(path: str) -> Tuple[Optional[str], Optional[str]]:
    """fairseq's own rule (data_utils.infer_language_pair): the first file named <split>.<src>-<tgt>.*"""
    for fname in sorted(os.listdir(path)):
        parts = fname.split(".")
        if len(parts) >= 3 and len(parts[1].split("-")) == 2:
            src, tgt = parts[1].split("-")
            return src, tgt
    return None, None
