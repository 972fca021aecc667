"""What every evaluator shares: input checks, reading a checkpoint's model settings, running the real fairseq
command-line tools, and reading their output."""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

POSITIONS = ("encoder", "decoder", "cross")
# fairseq's own models: every attention is its MultiheadAttention (softmax)
FAIRSEQ_SOFTMAX_MODELS = {"transformer": POSITIONS, "transformer_lm": ("decoder",)}
KVATTN_MODELS = {"kvattn_transformer": POSITIONS, "kvattn_lm": ("decoder",)}


class EvalError(Exception):
    """Bad input (a missing file, a mismatch, a refused flag): one line on stderr, exit status 2."""


class ToolError(Exception):
    """A fairseq tool failed: one line on stderr naming its log; exit status 1, or 2 when the tool itself refused
    its command line (an extra fairseq flag it does not know)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# --- input checks -----------------------------------------------------------------------------------------------
def require_dir(path: str, flag: str) -> str:
    if not os.path.isdir(path):
        raise EvalError(f"{flag} {path}: no such directory")
    return path


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise EvalError(f"{what}: file not found: {path}")
    return path


def require_data_bin(data_bin: str, flag: str, splits: Sequence[str]) -> None:
    """A fairseq-preprocess output directory holding each of `splits` (some *.bin file named after it)."""
    require_dir(data_bin, flag)
    names = os.listdir(data_bin)
    if not any(n.startswith("dict.") for n in names):
        raise EvalError(f"{flag}: {data_bin} holds no dict.*.txt: not a fairseq-preprocess output directory")
    for split in splits:
        if not any(n.startswith(split + ".") and n.endswith(".bin") for n in names):
            raise EvalError(f"{flag}: {data_bin} has no binarized '{split}' split ({split}.*.bin)")


def read_lines(path: str, what: str) -> List[str]:
    """The lines of a UTF-8 text file, split on "\n" only (str.splitlines would also split on U+2028, U+0085,
    form feeds ... which real corpora contain, and miscount the sentences)."""
    require_file(path, what)
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line[:-1].rstrip("\r") if line.endswith("\n") else line.rstrip("\r") for line in f]


# Flags the evaluators set themselves, or that would change what the hypotheses look like.
MANAGED_GENERATE_FLAGS = ("--path", "--user-dir", "--gen-subset", "--beam", "--lenpen", "--batch-size",
                          "--max-sentences", "--max-tokens", "--results-path", "--nbest", "--quiet",
                          "--required-batch-size-multiple")
DETOK_FLAGS = ("--bpe", "--tokenizer", "--remove-bpe", "--post-process", "--sentencepiece-model")


def check_extra_flags(extra: Sequence[str], refused: Sequence[str], why: Dict[str, str] = None) -> None:
    for arg in extra:
        name = arg.split("=", 1)[0]
        if name in refused:
            reason = (why or {}).get(name, "the evaluator sets it itself; use its own option")
            raise EvalError(f"extra fairseq flag {name}: not allowed here ({reason})")


# --- checkpoints --------------------------------------------------------------------------------------------------
def load_checkpoint_state(path: str) -> dict:
    import torch

    import kvattn_fairseq  # noqa: F401  (allow-lists fairseq's checkpoint globals)

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # an old (non-zip) file cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (one line, no traceback)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"--checkpoint {path}: cannot load it: {first}") from None


def _getter(section):
    if isinstance(section, argparse.Namespace):
        return lambda key: getattr(section, key, None)
    if isinstance(section, dict):
        return section.get
    return lambda key: None


def model_info(state: dict, path: str) -> Dict:
    """Architecture, attention kind per position, heads, parameter count and updates, from a loaded checkpoint."""
    import torch

    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise EvalError(f"--checkpoint {path}: not a fairseq checkpoint (no 'model' state dict)")
    cfg = state.get("cfg") if isinstance(state.get("cfg"), dict) else {}
    section = cfg.get("model") if cfg.get("model") is not None else state.get("args")
    get = _getter(section)
    arch = get("arch") or get("_name")
    model_name = _model_name(arch)
    positions = KVATTN_MODELS.get(model_name) or FAIRSEQ_SOFTMAX_MODELS.get(model_name)
    attention = {}
    for pos in positions or POSITIONS:
        kind = get(f"{pos}_attention_type")
        if kind is None and model_name in FAIRSEQ_SOFTMAX_MODELS:
            kind = "softmax"
        if pos == "cross" and get("no_cross_attention"):
            kind = None
        if kind is not None:
            attention[pos] = kind
    heads = {p: get(f"{p}_attention_heads") for p in ("encoder", "decoder") if get(f"{p}_attention_heads")}
    seen, params = set(), 0
    for key, value in state["model"].items():
        if not torch.is_tensor(value) or not value.is_floating_point() or key.endswith("_float_tensor") \
                or key.endswith(".version"):
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if ident not in seen:  # shared embeddings are stored once
            seen.add(ident)
            params += value.numel()
    history = state.get("optimizer_history") or [{}]
    info = {"arch": arch, "model": model_name, "attention": attention, "heads": heads, "parameters": params,
            "num_updates": history[-1].get("num_updates") if isinstance(history[-1], dict) else None}
    mtp = get("max_target_positions")
    task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    if mtp is None and model_name in ("kvattn_lm", "transformer_lm"):
        mtp = task.get("tokens_per_sample")
    info["max_target_positions"] = mtp
    return info


def _model_name(arch: Optional[str]) -> Optional[str]:
    if arch is None:
        return None
    import kvattn_fairseq  # noqa: F401  (registers the plugin's architectures)
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_REGISTRY

    if arch in ARCH_MODEL_NAME_REGISTRY:
        return ARCH_MODEL_NAME_REGISTRY[arch]
    return arch if arch in MODEL_REGISTRY else None


def checkpoint_info(path: str) -> Tuple[Dict, Optional[List[str]]]:
    """(model info, the files it was averaged from or None) for the checkpoint at `path`."""
    require_file(path, "--checkpoint")
    state = load_checkpoint_state(path)
    info = model_info(state, path)
    averaged = state.get("kvattn_averaged_from")
    return info, list(averaged) if averaged else None


def average_last(checkpoint_dir: str, n: int, by: str, output: Optional[str]) -> Tuple[str, List[str]]:
    """Average the last `n` epoch/update checkpoints of `checkpoint_dir` (kvattn_fairseq.average_checkpoints)."""
    from .. import average_checkpoints as avg

    require_dir(checkpoint_dir, "--checkpoint-dir")
    try:
        paths = avg.last_checkpoints(checkpoint_dir, n, by)
        output = output or os.path.join(checkpoint_dir, f"checkpoint.avg{n}.pt")
        state = avg.average(paths)
        avg.save_atomic(state, output)
    except avg.AverageError as e:
        raise EvalError(str(e)) from None
    return output, [os.path.basename(p) for p in paths]


# --- running fairseq ----------------------------------------------------------------------------------------------
def fairseq_command(tool: str) -> List[str]:
    """The real fairseq console tool, run by this interpreter (fairseq_cli.generate, fairseq_cli.eval_lm)."""
    return [sys.executable, "-m", f"fairseq_cli.{tool}"]


def user_dir() -> str:
    import kvattn_fairseq

    return kvattn_fairseq.USER_DIR


def run_tool(cmd: Sequence[str], log_path: str, label: str) -> str:
    """Run `cmd`, its stdout and stderr into `log_path` (fairseq logs to stdout), and return the whole output.
    A failure raises ToolError naming the log and its last error line."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)) or ".", exist_ok=True)
    env = dict(os.environ, PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore"), PYTHONIOENCODING="utf-8")
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace", newline="\n") as buf:
        proc = subprocess.run([str(c) for c in cmd], stdout=buf, stderr=subprocess.STDOUT, env=env)
        buf.seek(0)
        output = buf.read()
    with open(log_path, "w", encoding="utf-8") as f:
        f.write("# " + " ".join(_shell_quote(str(c)) for c in cmd) + "\n" + output)
    if proc.returncode != 0:
        raise ToolError(f"{label} failed (exit {proc.returncode}): {_last_error(output)}; full log: {log_path}",
                        2 if proc.returncode == 2 and ": error:" in output else 1)
    return output


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _last_error(output: str) -> str:
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception)\b", line) or ": error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s, "
                        r"([\d.]+) tokens/s\)")


def parse_generate(output: str) -> Tuple[Dict[int, str], Dict]:
    """{sentence id: best hypothesis (as fairseq printed it)} and fairseq's summary line, from generate's output."""
    hyps: Dict[int, str] = {}
    for line in output.split("\n"):  # not splitlines(): a hypothesis may hold U+2028 and the like
        if line.startswith("H-"):
            head, _score, text = (line.split("\t") + ["", ""])[:3]
            try:
                sid = int(head[2:])
            except ValueError:
                continue
            hyps.setdefault(sid, text)  # the first H line of an id is its best hypothesis
    summary = {}
    m = TRANSLATED.search(output)
    if m:
        summary = {"sentences": int(m.group(1).replace(",", "")), "tokens": int(m.group(2).replace(",", "")),
                   "seconds": float(m.group(3)), "sentences_per_s": float(m.group(4)),
                   "tokens_per_s": float(m.group(5))}
    return hyps, summary


def in_order(hyps: Dict[int, str], n_expected: int, reference: str) -> List[str]:
    """The hypotheses in the test set's order; every sentence must have exactly one (none silently dropped)."""
    expected = set(range(n_expected))
    if set(hyps) != expected:
        missing = sorted(expected - set(hyps))
        extra = sorted(set(hyps) - expected)
        detail = []
        if missing:
            detail.append(f"no hypothesis for {len(missing)} sentence(s), ids {_ids(missing)}")
        if extra:
            detail.append(f"{len(extra)} hypothesis id(s) beyond the reference, ids {_ids(extra)}")
        raise EvalError(f"fairseq-generate produced {len(hyps)} hypotheses for the {n_expected} sentences of "
                        f"{reference}: {'; '.join(detail)}")
    return [hyps[i] for i in range(n_expected)]


def _ids(ids: List[int]) -> str:
    return ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")


DEFAULT_BATCH_SIZE = 128  # fairseq's Scaling-NMT README decodes with --batch-size 128


def batch_settings(a, default: int = DEFAULT_BATCH_SIZE) -> Dict:
    """The batch size / max tokens actually passed (for the results file)."""
    return {"batch_size": a.batch_size or (None if a.max_tokens else default), "max_tokens": a.max_tokens}


def generate(data_bin: str, checkpoint: str, *, subset: str, beam: int, lenpen: float, batch_size: Optional[int],
             max_tokens: Optional[int], flags: Sequence[str], extra: Sequence[str], log_path: str) -> Tuple[
                 Dict[int, str], Dict, List[str]]:
    """Run fairseq-generate; returns (hypotheses by id, summary line, the fairseq flags used after the data dir)."""
    args = ["--path", checkpoint, "--user-dir", user_dir(), "--gen-subset", subset, "--beam", str(beam),
            "--lenpen", str(lenpen), "--required-batch-size-multiple", "1"]
    if max_tokens:
        args += ["--max-tokens", str(max_tokens)]
    if batch_size or not max_tokens:
        args += ["--batch-size", str(batch_size or DEFAULT_BATCH_SIZE)]
    args += [str(f) for f in flags] + [str(e) for e in extra]
    output = run_tool(fairseq_command("generate") + [data_bin] + args, log_path, "fairseq-generate")
    hyps, summary = parse_generate(output)
    if summary and summary["sentences"] != len(hyps):
        raise EvalError(f"fairseq-generate reports {summary['sentences']} sentences translated but printed "
                        f"{len(hyps)} hypotheses (see {log_path})")
    return hyps, summary, args


def settings_flags(args: Sequence[str]) -> List[str]:
    """The fairseq flags for the results file, without this machine's paths (--path, --user-dir)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--path", "--user-dir"):
            skip = True
            continue
        out.append(a)
    return out


# --- the options every evaluator shares ------------------------------------------------------------------------------
def resolve_checkpoint(a) -> Tuple[str, Optional[List[str]]]:
    """--checkpoint, or the average of the last --average-last checkpoints of --checkpoint-dir (written to
    --average-output, default CHECKPOINT_DIR/checkpoint.avgN.pt)."""
    if a.average_last:
        if not a.checkpoint_dir:
            raise EvalError("--average-last: needs --checkpoint-dir")
        return average_last(a.checkpoint_dir, a.average_last, a.average_by, a.average_output)
    if not a.checkpoint:
        raise EvalError("--checkpoint: required (or --average-last N with --checkpoint-dir)")
    require_file(a.checkpoint, "--checkpoint")
    return a.checkpoint, None


def stem(out: str) -> str:
    """results.json -> results: the prefix of the hypotheses and log files written next to the results file."""
    return out[:-len(".json")] if out.endswith(".json") else out


def experiment_name(a, checkpoint: str) -> str:
    if a.name:
        return a.name
    directory = a.checkpoint_dir if a.average_last else os.path.dirname(os.path.abspath(checkpoint))
    return os.path.basename(os.path.normpath(os.path.abspath(directory))) or "experiment"
