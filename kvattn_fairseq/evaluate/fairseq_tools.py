"""The one module that drives fairseq's command-line tools for the evaluators and reads their output: fairseq-generate
and fairseq-eval-lm (util.proc.fairseq_tool: this interpreter's), with the plugin's --user-dir, their output kept in
a log next to the results and read back (parse_generate: hypotheses in the test set's order, every sentence
accounted for; parse_eval_lm: loss and perplexity).  The tests read fairseq's output with the same two parsers."""
import re
from typing import Dict, List, Optional, Sequence, Tuple

from ..util import proc
from ..util.errors import OneLineError, StepFailed

# Flags the generation evaluators set themselves, or that would change what the hypotheses look like.
MANAGED_GENERATE_FLAGS = ("--path", "--user-dir", "--gen-subset", "--beam", "--lenpen", "--batch-size",
                          "--max-sentences", "--max-tokens", "--results-path", "--nbest", "--quiet",
                          "--required-batch-size-multiple")
DETOK_FLAGS = ("--bpe", "--tokenizer", "--remove-bpe", "--post-process", "--sentencepiece-model")
MANAGED_EVAL_LM_FLAGS = ("--path", "--user-dir", "--gen-subset", "--context-window", "--tokens-per-sample",
                         "--batch-size", "--max-sentences", "--max-tokens", "--output-word-probs",
                         "--output-word-stats", "--quiet")
DEFAULT_BATCH_SIZE = 128  # fairseq's Scaling-NMT README decodes with --batch-size 128


def check_extra_flags(extra: Sequence[str], refused: Sequence[str], why: Dict[str, str] = None) -> None:
    """Refuse, before anything runs, a flag after `--` that the evaluator sets itself."""
    for arg in extra:
        name = arg.split("=", 1)[0]
        if name in refused:
            reason = (why or {}).get(name, "the evaluator sets it itself; use its own option")
            raise OneLineError(f"extra fairseq flag {name}: not allowed here ({reason})")


def user_dir() -> str:
    from ..util.paths import USER_DIR

    return USER_DIR


def batch_flags(batch_size: Optional[int], max_tokens: Optional[int], default: int) -> List[str]:
    flags = ["--max-tokens", str(max_tokens)] if max_tokens else []
    if batch_size or not max_tokens:
        flags += ["--batch-size", str(batch_size or default)]
    return flags


def batch_settings(a, default: int = DEFAULT_BATCH_SIZE) -> Dict:
    """The batch size / max tokens actually passed (for the results file)."""
    return {"batch_size": a.batch_size or (None if a.max_tokens else default), "max_tokens": a.max_tokens}


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


# --- fairseq-generate -------------------------------------------------------------------------------------------------
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
        raise OneLineError(f"fairseq-generate produced {len(hyps)} hypotheses for the {n_expected} sentences of "
                           f"{reference}: {'; '.join(detail)}")
    return [hyps[i] for i in range(n_expected)]


def _ids(ids: List[int]) -> str:
    return ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")


def generate(data_bin: str, checkpoint: str, *, subset: str, beam: int, lenpen: float, batch_size: Optional[int],
             max_tokens: Optional[int], flags: Sequence[str], extra: Sequence[str], log_path: str) -> Tuple[
                 Dict[int, str], Dict, List[str]]:
    """Run fairseq-generate; returns (hypotheses by id, summary line, the fairseq flags used after the data dir)."""
    args = ["--path", checkpoint, "--user-dir", user_dir(), "--gen-subset", subset, "--beam", str(beam),
            "--lenpen", str(lenpen), "--required-batch-size-multiple", "1",
            *batch_flags(batch_size, max_tokens, DEFAULT_BATCH_SIZE), *map(str, flags), *map(str, extra)]
    output = proc.run(proc.fairseq_tool("fairseq-generate") + [data_bin] + args, log_path, label="fairseq-generate")
    hyps, summary = parse_generate(output)
    if summary and summary["sentences"] != len(hyps):
        raise OneLineError(f"fairseq-generate reports {summary['sentences']} sentences translated but printed "
                           f"{len(hyps)} hypotheses (see {log_path})")
    return hyps, summary, args


# --- fairseq-eval-lm --------------------------------------------------------------------------------------------------
LOSS = re.compile(r"Loss \(base 2\): ([\d.]+|inf|nan), Perplexity: ([\d.]+|inf|nan)")
TOKENS = re.compile(r"Evaluated ([\d,]+) tokens")


def eval_lm(data_bin: str, checkpoint: str, *, subset: str, context_window: int, tokens_per_sample: int,
            batch_size: Optional[int], max_tokens: Optional[int], extra: Sequence[str], log_path: str) -> Tuple[
                Dict, List[str]]:
    """Run fairseq-eval-lm on one split; returns ({loss_base2, ppl, tokens}, the fairseq flags used)."""
    args = ["--path", checkpoint, "--user-dir", user_dir(), "--gen-subset", subset, "--context-window",
            str(context_window), "--tokens-per-sample", str(tokens_per_sample),
            *batch_flags(batch_size, max_tokens, 2), *map(str, extra)]
    output = proc.run(proc.fairseq_tool("fairseq-eval-lm") + [data_bin] + args, log_path, label="fairseq-eval-lm")
    scores = parse_eval_lm(output)
    if scores is None:
        raise StepFailed(f"fairseq-eval-lm printed no loss/perplexity for '{subset}'; full log: {log_path}")
    return scores, args


def parse_eval_lm(output: str) -> Optional[Dict]:
    """{loss_base2, ppl, tokens} from fairseq-eval-lm's output, or None when it printed no result."""
    loss, tokens = LOSS.search(output), TOKENS.search(output)
    if not loss or not tokens:
        return None
    return {"loss_base2": float(loss.group(1)), "ppl": float(loss.group(2)),
            "tokens": int(tokens.group(1).replace(",", ""))}
