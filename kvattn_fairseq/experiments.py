"""The papers' training configurations as one table, and the `fairseq-train` command for each.

    python -m kvattn_fairseq.experiments list
    python -m kvattn_fairseq.experiments show  EXPERIMENT [DATA_BIN [SAVE_DIR]] [OPTIONS] [-- FLAGS...]
    python -m kvattn_fairseq.experiments train EXPERIMENT DATA_BIN SAVE_DIR [OPTIONS] [-- FLAGS...]
    python -m kvattn_fairseq.experiments hydra-configs --out configs [--tiny] [--check]
    scripts/train.sh EXPERIMENT DATA_BIN SAVE_DIR [OPTIONS] [-- FLAGS...]          (= train)

    OPTIONS: --kind KIND, --tiny, --drop FLAG (repeatable)

`train` prints the command, then runs it (the process becomes fairseq-train).  The command is

    fairseq-train DATA_BIN --user-dir PLUGIN --task TASK --arch ARCH --save-dir SAVE_DIR  <the experiment's flags>
                  <--kind placement>  <FLAGS after -->

and fairseq parses it with argparse, where a later occurrence of a flag overrides an earlier one, so FLAGS after `--`
override the table (e.g. `-- --max-tokens 2048 --update-freq 32 --distributed-world-size 4`).  A store-true flag of
the table (--fp16, --share-all-embeddings, ...) cannot be switched off that way (fairseq has no --no-X for them):
`--drop fp16` removes it from the table's flags instead.

--kind KIND puts KIND at every attention position of the experiment's model where the registry allows it and
fairseq's softmax attention where it does not (printed as a comment).  --tiny swaps in the tiny architecture of the
same model with the experiment's attention layout, and tiny limits (4 updates, small batches, no fp16, 2 validation
steps), so that the whole chain runs on a CPU in seconds.  Training resumes from SAVE_DIR/checkpoint_last.pt, as
fairseq always does.

Every value below comes from the paper's released code or scripts, as summarised in the project's research notes
(`research/memsizer.md`, `research/variants.md`, `research/anchors.md`), cited next to each group of flags; values
marked [ours] are this port's choices where the source gives nothing.
"""
import argparse
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

PROG = "python -m kvattn_fairseq.experiments"


def _flags(text: str) -> Tuple[str, ...]:
    """A block of flags as written on a command line; `#` starts a comment."""
    return tuple(shlex.split(text, comments=True))


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    task: str                      # fairseq --task
    arch: str                      # fairseq --arch (one of the plugin's architectures)
    flags: Tuple[str, ...]         # the rest of the fairseq-train command line
    source: str                    # where the values come from
    data: str                      # what DATA_BIN must hold, and how to make it
    tiny: Tuple[str, ...] = ()     # extra --tiny settings (replace the flag's value, or add it)


# --- MemSizer (Zhang & Cai, EMNLP 2022) -------------------------------------------------------------------------------
# research/memsizer.md §3.1: the official `mt_ende.sh` (fairseq 0.10).  The MemSizer settings (softmax encoder,
# MemSizer decoder with causal k=4 and cross k=32, init scales 8/8, 16 heads) are the architecture's own.
_MEMSIZER_MT = _flags("""
    --source-lang en --target-lang de   # scripts/prepare-wmt16-en-de.sh's (and Scaling NMT's) naming
    --share-all-embeddings              # mt_ende.sh (it also passes --share-decoder-input-output-embed, implied)
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
    --dropout 0.3
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --max-tokens 3584 --update-freq 16 --fp16
    --seed 8 --max-update 90000 --no-epoch-checkpoints --find-unused-parameters
    # validation BLEU and model selection as in mt_ende.sh (beam 4, lenpen 0.6, max_len 1.2x+10)...
    --eval-bleu --eval-bleu-args '{"beam": 4, "lenpen": 0.6, "max_len_a": 1.2, "max_len_b": 10}'
    --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
    # ...[ours] decoded for scripts/prepare-wmt16-en-de.sh's data (sentencepiece on raw text, no Moses) instead of
    # the paper's Moses-tokenized subword-nmt data (--eval-bleu-detok moses --eval-bleu-remove-bpe): pieces joined,
    # nothing to detokenize, sacreBLEU's 13a tokenization
    --eval-bleu-remove-bpe sentencepiece --eval-bleu-detok space
    # mt_ende.sh also passes --reset-optimizer; it is left out because it would reset the optimizer on every resume
""")

# research/memsizer.md §3.3: the repository has no summarization recipe and the paper's settings could not be
# retrieved.  [ours] everything: MemSizer's MT recipe at Transformer-base size (architecture memsizer_cnn_dm), with
# the sources truncated to 1024 tokens as in fairseq's BART CNN/DM recipe (research/anchors.md §5.2).
_MEMSIZER_CNN_DM = _flags("""
    --source-lang source --target-lang target --truncate-source   # prepare-cnndm.sh's (= fairseq BART's) naming
    --share-all-embeddings
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --max-tokens 4096 --update-freq 8 --fp16                      # [ours]
    --seed 8 --max-update 50000 --no-epoch-checkpoints            # [ours]
    --skip-invalid-size-inputs-valid-test --find-unused-parameters
""")

# research/memsizer.md §3.2: the official `lm_wikitext-103.sh`, written for fairseq 0.10, whose cosine schedule
# took --lr as the floor, --max-lr as the peak and --min-lr as the stopping point.  fairseq 0.12 renamed these:
# peak --lr 1.0, floor --min-lr 1e-4, stop --stop-min-lr 1e-9 (the same schedule; fairseq's own WikiText-103
# adaptive-input recipe made the same change).  Model settings (32 pre-norm layers, layerdrop 0.2, dropout 0.2,
# MemSizer k=32, init scales 32/1) are the architecture's own.
_MEMSIZER_LM = _flags("""
    --criterion adaptive_loss
    --optimizer nag --clip-norm 0.1
    --lr-scheduler cosine --lr 1.0 --min-lr 1e-4 --stop-min-lr 1e-09
    --t-mult 2 --lr-period-updates 270000 --lr-shrink 0.75 --warmup-updates 16000 --warmup-init-lr 1e-07
    --max-tokens 3072 --update-freq 3 --tokens-per-sample 512 --sample-break-mode none
    --skip-invalid-size-inputs-valid-test
    --fp16 --fp16-init-scale 8
    --ddp-backend legacy_ddp            # the script's no_c10d (an alias in fairseq 0.12)
    --seed 8 --max-update 286000 --save-interval 2 --find-unused-parameters
    # the script also passes --reset-optimizer; left out (it would reset the optimizer on every resume)
""")

# --- Transformer-MGK / MLK (Nguyen et al., ICML 2022) -----------------------------------------------------------------
# research/variants.md §2.6 and the official README command (minhtannguyen/transformer-mgk,
# language-modeling/lmtool-fwms): Adam lr 2.5e-4, warmup 2000, max_step 500000, tgt_len 256, mem_len 0,
# batch 96, adaptive softmax, seed 1111; the rest are that code's src/train.py defaults, read there: torch Adam's
# betas, gradient clipping 0.25 (--clip), cosine annealing to 0 (--scheduler cosine, --eta_min 0) after a linear
# warm-up (fairseq's cosine period is max_update - warmup rather than max_update: 0.4% shorter).  Their batch of 96
# was split over 2 GPUs by DataParallel; with fairseq's data parallelism pass e.g.
# `-- --distributed-world-size 2 --batch-size 48` for the same update.  Model settings (16 layers of 128, head width
# 16, FFN 2048, dropout 0.1, no attention dropout, heads per row) are the architectures'.
_MGK_LM = _flags("""
    --criterion adaptive_loss
    --ddp-backend legacy_ddp            # [ours] fairseq's adaptive_loss refuses its default pytorch_ddp
    --optimizer adam --adam-betas '(0.9, 0.999)' --clip-norm 0.25
    --lr 2.5e-4 --lr-scheduler cosine --warmup-updates 2000
    --max-update 500000
    --tokens-per-sample 256 --sample-break-mode none --batch-size 96
    --skip-invalid-size-inputs-valid-test
    --seed 1111
""")

# --- Key-Value Transformer (Borji, 2023) ------------------------------------------------------------------------------
# research/variants.md §1.4, `Reverse_sort_pos.py`: Adam lr 1e-3, cosine schedule with a 5-step warm-up, gradient
# clipping 5, batch 128, 2 epochs of 50,000 sequences (390 full batches an epoch: 780 updates, which fairseq's cosine
# schedule needs as --max-update).  The paper's model is an encoder-only per-position classifier; here it is a
# fairseq encoder-decoder (architecture kv_synthetic: 2+2 layers of 64, FFN 128, 4 heads, dropout 0.1), trained with
# plain cross-entropy like the paper's classifier.  Arms: the architecture is symmetric KV; `--kind kv_asym` is
# KV + the 2D positional term, `--kind softmax` the QKV baseline.
_KV_SYNTHETIC = _flags("""
    --source-lang src --target-lang tgt
    --optimizer adam --adam-betas '(0.9, 0.999)' --lr 1e-3 --clip-norm 5.0
    --lr-scheduler cosine --warmup-updates 5
    --batch-size 128 --max-epoch 2 --max-update 780
    --criterion cross_entropy
""")

# research/variants.md §1.4 and, read there, the notebook `translation_transformer_pos.ipynb` (aliborji/kv-transformer,
# Multi30k en->de): Adam betas (0.9, 0.98), eps 1e-9,
# the Noam schedule d^-0.5 * min(step^-0.5, step * 4000^-1.5), which is fairseq's inverse_sqrt with 4000 warm-up steps
# from 0 and a peak of (256 * 4000)^-0.5 = 9.882e-4 at the architecture's d_model 256; label smoothing 0.1; batches of
# 50 sentences; 20 epochs; dropout 0.1 (the architecture's).  The notebook decodes greedily (fairseq-generate --beam 1).
_KV_MULTI30K = _flags("""
    --source-lang en --target-lang de
    --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-09
    --lr-scheduler inverse_sqrt --warmup-updates 4000 --lr 9.882e-4
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --batch-size 50 --required-batch-size-multiple 1   # exactly 50 (fairseq would round batches down to 48)
    --max-epoch 20
""")

_LM_TINY = _flags("--criterion cross_entropy")

EXPERIMENTS: Dict[str, Experiment] = {}


def _add(*experiments: Experiment) -> None:
    for e in experiments:
        assert e.name not in EXPERIMENTS, e.name
        EXPERIMENTS[e.name] = e


_add(
    Experiment("memsizer_wmt16_en_de", "MemSizer, WMT16 En-De, Transformer-big", "translation",
               "memsizer_wmt_en_de_big", _MEMSIZER_MT, "research/memsizer.md §3.1 (mt_ende.sh)",
               "scripts/prepare-wmt16-en-de.sh --out DIR (DATA_BIN = DIR/data-bin: en-de, joined dictionary)"),
    Experiment("memsizer_cnn_dm", "MemSizer, CNN/DailyMail summarization", "translation", "memsizer_cnn_dm",
               _MEMSIZER_CNN_DM, "research/memsizer.md §3.3 (no recipe released: our choices)",
               "scripts/prepare-cnndm.sh --out DIR (DATA_BIN = DIR/data-bin: source-target, joined dictionary)"),
    Experiment("memsizer_wikitext103", "MemSizer, WikiText-103 language model", "language_modeling",
               "memsizer_lm_wiki103", _MEMSIZER_LM, "research/memsizer.md §3.2 (lm_wikitext-103.sh)",
               "scripts/prepare-wikitext103.sh --out DIR (DATA_BIN = DIR/data-bin: dict.txt)", tiny=_LM_TINY),
)
for _row in ("softmax8", "mgk4", "smgk4", "mgk8", "smgk8", "linear8", "mlk4", "mlk8"):
    _add(Experiment(f"mgk_wikitext103_{_row}", f"Transformer-MGK paper, WikiText-103, Table 3 row {_row}",
                    "language_modeling", f"mgk_lm_wiki103_{_row}", _MGK_LM,
                    "research/variants.md §2.6; transformer-mgk README command and src/train.py defaults",
                    "scripts/prepare-wikitext103.sh --out DIR (DATA_BIN = DIR/data-bin: dict.txt)", tiny=_LM_TINY))
for _task in ("reverse", "sort", "copy", "swap", "sub"):
    _add(Experiment(f"kv_synthetic_{_task}", f"Key-Value Transformer, synthetic task '{_task}'", "translation",
                    "kv_synthetic", _KV_SYNTHETIC, "research/variants.md §1.4; kv-transformer Reverse_sort_pos.py",
                    f"python -m kvattn_fairseq.synthetic --task {_task} --out DIR  (DATA_BIN = DIR/data-bin)"))
_add(Experiment("kv_multi30k_en_de", "Key-Value Transformer, Multi30k En-De translation", "translation",
                "kv_multi30k", _KV_MULTI30K,
                "research/variants.md §1.4; kv-transformer translation_transformer_pos.ipynb",
                "fairseq-preprocess output of Multi30k en-de (dict.en.txt, dict.de.txt; no prepare script here)"))

# --tiny: settings for every experiment.  A flag in TINY_REPLACE only changes a value the experiment sets; TINY_SET is
# always applied; TINY_DROP is removed.
TINY_REPLACE = _flags("--warmup-updates 1 --update-freq 1 --max-tokens 1024 --batch-size 16 --tokens-per-sample 64")
TINY_SET = _flags("--max-update 4 --max-valid-steps 2 --log-format simple --log-interval 1")
TINY_DROP = ("--fp16", "--fp16-init-scale", "--memory-efficient-fp16", "--bf16")
TINY_ARCH = {"kvattn_transformer": "kvattn_transformer_tiny", "kvattn_lm": "kvattn_lm_tiny"}


class ExperimentError(ValueError):
    """Bad input; the message is one line."""


# --- flag lists -------------------------------------------------------------------------------------------------------
def _groups(flags: Sequence[str]) -> List[Tuple[str, List[str]]]:
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


def _ungroup(groups: Sequence[Tuple[str, Sequence[str]]]) -> List[str]:
    return [tok for flag, values in groups for tok in (flag, *values)]


def _apply(flags: Sequence[str], replace: Sequence[str] = (), set_: Sequence[str] = (),
           drop: Sequence[str] = ()) -> List[str]:
    groups = [(f, v) for f, v in _groups(flags) if f not in drop]
    index = {f: i for i, (f, _) in enumerate(groups)}
    for flag, values in _groups(replace):
        if flag in index:
            groups[index[flag]] = (flag, values)
    for flag, values in _groups(set_):
        if flag in index:
            groups[index[flag]] = (flag, values)
        else:
            index[flag] = len(groups)
            groups.append((flag, values))
    return _ungroup(groups)


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
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY

    import kvattn_fairseq  # noqa: F401  (registers the architectures)

    return ARCH_MODEL_NAME_REGISTRY[arch]


def positions_of(arch: str) -> Tuple[str, ...]:
    from .models.kvattn_lm import LM_POSITIONS
    from .modules.registry import POSITIONS

    return LM_POSITIONS if model_of(arch) == "kvattn_lm" else POSITIONS


def kind_placement(arch: str, kind: str) -> Tuple[List[str], List[str]]:
    """(flags, comment lines) putting `kind` at every position of `arch`'s model where the registry allows it and
    fairseq's softmax attention at the others, so that --kind K gives the same model whatever the experiment's own
    attention was."""
    from .modules.registry import (ATTENTION_KINDS, DEFAULT_KIND, POSITION_FLAGS, POSITION_NAMES, kinds_at)

    if kind not in ATTENTION_KINDS:
        raise ExperimentError(f"--kind: unknown attention kind {kind!r}; choose one of: "
                              f"{', '.join(sorted(ATTENTION_KINDS))}")
    positions = positions_of(arch)
    spec = ATTENTION_KINDS[kind]
    fits = [p for p in positions if p in spec.positions]
    if not fits:
        why = "; ".join(f"{POSITION_NAMES[p]}: {spec.unsupported.get(p, 'not implemented there')}" for p in positions)
        usable = sorted({k for p in positions for k in kinds_at(p)})
        raise ExperimentError(f"--kind: {kind!r} fits no attention position of {arch} ({why}); "
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
    from .building import parse_model_args
    from .modules.registry import ATTENTION_KINDS, POSITION_FLAGS, position_dest

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

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def train_args(name: str, kind: Optional[str] = None, tiny: bool = False, extra: Sequence[str] = (),
               drop: Sequence[str] = ()) -> Tuple[str, List[str], List[str]]:
    """(arch, flags after --arch, notes) for an experiment: its table flags (less `drop`), --tiny changes, --kind
    placement and the passthrough flags, in that order."""
    exp = get(name)
    arch, flags, notes = exp.arch, list(exp.flags), []
    drop = ["--" + f.lstrip("-") for f in drop]  # fp16, --fp16 and -fp16 all name --fp16
    if drop:
        table = {f for f, _ in _groups(exp.flags)}
        unknown = [f for f in drop if f not in table]
        if unknown:
            raise ExperimentError(f"--drop: {', '.join(unknown)} is not a flag of {name}'s table; its flags: "
                                  f"{' '.join(f for f, _ in _groups(exp.flags))}")
        flags = _apply(flags, drop=drop)
        notes.append(f"--drop: removed {' '.join(drop)} from the table's flags")
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


def fairseq_train_exe() -> List[str]:
    local = os.path.join(os.path.dirname(sys.executable), "fairseq-train")
    if os.path.exists(local):
        return [local]
    found = shutil.which("fairseq-train")
    return [found] if found else [sys.executable, "-m", "fairseq_cli.train"]


def build_command(name: str, data_bin: str, save_dir: str, kind: Optional[str] = None, tiny: bool = False,
                  extra: Sequence[str] = (), drop: Sequence[str] = ()) -> Command:
    import kvattn_fairseq

    exp = get(name)
    arch, flags, notes = train_args(name, kind, tiny, extra, drop)
    argv = [*fairseq_train_exe(), data_bin, "--user-dir", kvattn_fairseq.USER_DIR, "--task", exp.task,
            "--arch", arch, "--save-dir", save_dir, *flags]
    return Command(argv, notes)


def check_data(name: str, data_bin: str, extra: Sequence[str] = ()) -> None:
    """DATA_BIN must exist and hold the dictionaries fairseq will open first (one-line errors, before anything
    runs).  DATA_BIN may be a colon-separated list of shards, as in fairseq; the dictionaries sit in the first."""
    exp = get(name)
    shards = [s for s in data_bin.split(":") if s]
    if not shards:
        raise ExperimentError("DATA_BIN: empty path")
    for shard in shards:
        if not os.path.isdir(shard):
            raise ExperimentError(f"DATA_BIN: {shard} is not a directory (the fairseq-preprocess output: {exp.data})")
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
                raise ExperimentError(f"DATA_BIN: cannot infer the language pair from the files in {first}; "
                                      f"pass -- --source-lang S --target-lang T")
        needed = [f"dict.{src}.txt", f"dict.{tgt}.txt"]
    for fname in needed:
        if not os.path.isfile(os.path.join(first, fname)):
            raise ExperimentError(f"DATA_BIN: {os.path.join(first, fname)} is missing "
                                  f"(expected the fairseq-preprocess output: {exp.data})")


def _infer_language_pair(path: str) -> Tuple[Optional[str], Optional[str]]:
    """fairseq's own rule (data_utils.infer_language_pair): the first file named <split>.<src>-<tgt>.*"""
    for fname in sorted(os.listdir(path)):
        parts = fname.split(".")
        if len(parts) >= 3 and len(parts[1].split("-")) == 2:
            src, tgt = parts[1].split("-")
            return src, tgt
    return None, None


# --- hydra configs ----------------------------------------------------------------------------------------------------
# fairseq's hydra path (fairseq_cli/hydra_train.py) composes the named YAML over the FairseqConfig schema.  A legacy
# (argparse) model such as kvattn_transformer / kvattn_lm has no dataclass, so its `model:` node is a plain dict with
# `_name: <arch>` and any keys; fairseq's models.build_model then runs the architecture function on it (filling what
# the YAML leaves out) and the plugin's build_model turns it into a Namespace.  The YAML therefore holds exactly the
# flags of the table, each under the config group that owns it, with its value as fairseq's parser types it.
_GROUPS = ("common", "common_eval", "distributed_training", "dataset", "optimization", "checkpoint", "bmuf",
           "generation", "eval_lm", "interactive", "ema")
_REGISTRY_GROUPS = ("task", "criterion", "optimizer", "lr_scheduler")
HYDRA_HEADER = """\
# {name}: {summary}
# Generated from the experiments table in kvattn_fairseq/experiments.py (edit the table, not this file) by
#   python -m kvattn_fairseq.experiments hydra-configs --out configs{tiny}
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

    import kvattn_fairseq  # noqa: F401

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
    raise ExperimentError(f"no config group owns {dest!r}")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def hydra_config(name: str, tiny: bool = False) -> Dict[str, Dict]:
    """The experiment as a fairseq-hydra-train config (nested dict, groups in FairseqConfig order)."""
    exp = get(name)
    arch, flags, _ = train_args(name, tiny=tiny)
    placeholder = ["DATA_BIN", "--task", exp.task, "--arch", arch, "--save-dir", "SAVE_DIR"]
    args, parser = parse_training_args(placeholder + list(flags))
    dests = _dests(parser)
    model_dests = {a.dest for g in parser._action_groups if g.title == "Model-specific configuration"
                   for a in g._group_actions}
    from fairseq.registry import REGISTRIES

    cfg: Dict[str, Dict] = {}
    for flag, _values in _groups(flags):
        dest = dests[flag]
        if dest in REGISTRIES:  # --optimizer adam etc.: the group's _name
            cfg.setdefault(dest, {})
            continue
        group = _owner(dest, exp.task, args, model_dests)
        cfg.setdefault(group, {})[dest] = _plain(getattr(args, dest))
    # the attention kind at every position, explicit so that hydra overrides can change it
    from .modules.registry import position_dest

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

    exp = get(name)
    body = yaml.safe_dump(hydra_config(name, tiny), sort_keys=False, default_flow_style=False, width=120)
    return HYDRA_HEADER.format(name=exp.name, summary=exp.summary, source=exp.source, data=exp.data,
                               tiny=" --tiny" if tiny else "") + body


def write_hydra_configs(out: str, tiny: bool = False, check: bool = False) -> List[str]:
    """Write (or, with check, compare) configs/<experiment>.yaml for every experiment; returns the stale ones."""
    stale = []
    if not check:
        os.makedirs(out, exist_ok=True)
    for name in EXPERIMENTS:
        path = os.path.join(out, f"{name}.yaml")
        text = hydra_yaml(name, tiny)
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current != text:
            stale.append(path)
            if not check:
                tmp = path + ".tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, path)
    return stale


# --- command line -----------------------------------------------------------------------------------------------------
def _split_passthrough(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.environ.get("KVATTN_EXPERIMENTS_PROG", PROG)
    own, extra = _split_passthrough(argv)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Flags after `--` go to fairseq-train verbatim, after the table's.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{list,show,train,hydra-configs}")
    sub.add_parser("list", help="the experiments")
    for cmd in ("show", "train"):
        p = sub.add_parser(cmd, help="print the command" if cmd == "show" else "print and run the command")
        p.add_argument("experiment")
        if cmd == "show":
            p.add_argument("data_bin", nargs="?", default="DATA_BIN")
            p.add_argument("save_dir", nargs="?", default="SAVE_DIR")
        else:
            p.add_argument("data_bin")
            p.add_argument("save_dir")
        p.add_argument("--kind", help="attention kind at every position where it fits (softmax elsewhere)")
        p.add_argument("--tiny", action="store_true", help="tiny architecture and limits (CPU smoke run)")
        p.add_argument("--drop", action="append", default=[], metavar="FLAG",
                       help="remove a flag (and its value) from the table's flags, e.g. --drop fp16 on a CPU; "
                            "repeatable (a store-true flag cannot be undone after --)")
    p = sub.add_parser("hydra-configs", help="write configs/<experiment>.yaml for fairseq-hydra-train")
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="the --tiny variants")
    p.add_argument("--check", action="store_true", help="only report files that are out of date (exit 1)")
    args = parser.parse_args(own)
    if extra and args.cmd not in ("show", "train"):
        parser.error("flags after -- are only for show and train")
    try:
        if args.cmd == "list":
            width = max(map(len, EXPERIMENTS))
            for exp in EXPERIMENTS.values():
                print(f"{exp.name:<{width}}  {exp.task:<17}  {exp.arch:<24}  {exp.summary}")
            return 0
        if args.cmd == "hydra-configs":
            stale = write_hydra_configs(args.out, args.tiny, args.check)
            for path in stale:
                print(("out of date: " if args.check else "wrote ") + path)
            return 1 if args.check and stale else 0
        command = build_command(args.experiment, args.data_bin, args.save_dir, args.kind, args.tiny, extra,
                                args.drop)
        if args.cmd == "train":
            check_data(args.experiment, args.data_bin, extra)
    except ExperimentError as e:
        parser.exit(2, f"{prog}: error: {e}\n")
    for note in command.notes:
        print(f"# {note}")
    print(command.shell())
    if args.cmd == "show":
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command.argv[0], command.argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
