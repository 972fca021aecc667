"""The results file every evaluator writes, and the code that reads it back (kvattn_fairseq/run/report.py).

One JSON object per evaluated checkpoint and task, schema ``kvattn_fairseq.evaluate/1``:

    schema        "kvattn_fairseq.evaluate/1"
    task          "wmt" | "cnndm" | "lm" | "synthetic" | "classify"
    table         which paper table the result belongs to: a table name of kvattn_fairseq/papers (--table, or
                  inferred from the task, the architecture and the attention layout: papers.default_table)
    name          experiment name (--name; default: the checkpoint's directory name)
    timestamp     UTC, ISO 8601, when the evaluation finished
    model         {"arch", "model" (fairseq model name), "attention": {position: kind} for the positions the model
                  has ("encoder", "decoder", "cross"), "heads": {"encoder", "decoder"}, "options": {flag dest: value}
                  of the attention kinds the model uses (e.g. "mgk_pi"), "parameters" (distinct
                  floating-point tensors of the state dict), "num_updates", "max_target_positions"}, read from
                  the checkpoint's saved cfg / args
    checkpoint    {"path": relative to the results file's directory, "averaged_from": [file names] or null}
    data          the data directory, relative to the results file's directory
    settings      generation / evaluation settings actually passed to fairseq (beam, lenpen, ..., extra flags)
    sentences     number of scored test sentences (translation-like tasks), or null for "lm"
    metrics       task-specific numbers (below)
    main          {"metric": name, "value": number}: the headline number of the task
    signature     the sacreBLEU signature (wmt), or a short description of the metric otherwise
    files         {"hypotheses": ..., "logs": [...]}, relative to the results file's directory
    versions      {"kvattn_fairseq", "fairseq", "torch", "sacrebleu" | "rouge_score", ...}
    training      the record of the run that trained the checkpoint (TRAIN_RECORD beside it, written by
                  `python -m kvattn_fairseq paper-tables`: {"settings": {experiment, kind, tiny, arch, flags, data},
                  "started", "finished"}), or null; a table marks the results of --tiny runs

metrics per task:
    wmt        sacrebleu (detokenized, the main number), sacrebleu_signature, sacrebleu_detail {score (unrounded),
               bp, sys_len, ref_len, precisions}, tok_bleu_compound_split (secondary: Moses-tokenized, ##AT##-split, no
               smoothing; inflated and not comparable with sacreBLEU), tok_bleu_tokenizer, tok_bleu_signature,
               generate {sentences_per_s, tokens_per_s} (fairseq-generate's own summary line)
    cnndm      rouge1 / rouge2 / rougeL / rougeLsum, each {"f", "p", "r"} ×100 (mean over examples), with
               rouge-score's use_stemmer=True; rougeLsum on newline-separated sentences; sentence_splitter
    lm         per split ("valid", "test"): {"loss_base2", "ppl", "tokens"}; plus context_window,
               tokens_per_sample (the model's input window) and scored_block (= tokens_per_sample - context_window)
    synthetic  sequence_accuracy and token_accuracy (fractions in [0, 1]), synthetic_task (e.g. "reverse"),
               sacrebleu and sacrebleu_signature (the hypotheses as fairseq prints them)
    classify   position_accuracy (the main number) and sequence_accuracy (fractions in [0, 1]), synthetic_task
"""
import datetime
import json
import os
from typing import Any, Dict, Iterable, List, Optional

from ..papers import TABLES, default_table
from ..util.errors import OneLineError
from ..util import proc
from ..util.io import write_atomic

SCHEMA = "kvattn_fairseq.evaluate/1"
TRAIN_RECORD = "kvattn-train.json"  # in a save directory: the settings its run was trained with
REQUIRED = ("schema", "task", "table", "name", "timestamp", "model", "checkpoint", "data", "settings", "sentences",
            "metrics", "main", "signature", "files", "versions")


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def relative(path: Optional[str], results_path: str) -> Optional[str]:
    """`path` relative to the results file's directory (so a results tree can move with its checkpoints)."""
    if path is None:
        return None
    base = os.path.dirname(os.path.abspath(results_path))
    try:
        return os.path.relpath(os.path.abspath(path), base)
    except ValueError:  # another drive (Windows)
        return os.path.basename(path)


def training_record(checkpoint: Optional[str]) -> Optional[Dict[str, Any]]:
    """The record of the run that trained `checkpoint` (TRAIN_RECORD in its directory), or None."""
    if not checkpoint:
        return None
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(checkpoint)), TRAIN_RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_tiny(result: Dict[str, Any]) -> bool:
    """Whether a result comes from a --tiny run (a pipeline check, not a result)."""
    return bool(((result.get("training") or {}).get("settings") or {}).get("tiny"))


def versions(*extra: str) -> Dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("kvattn_fairseq", "fairseq-fixed", "fairseq", "torch", *extra):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def make(task: str, *, main_metric: str, name: str, model: Dict[str, Any], checkpoint: str,
         averaged_from: Optional[List[str]], data: str, settings: Dict[str, Any], metrics: Dict[str, Any],
         main_value: float, signature: str,
         sentences: Optional[int], files: Dict[str, Any], results_path: str, table: Optional[str] = None,
         extra_versions: Iterable[str] = ()) -> Dict[str, Any]:
    """Assemble one results object; paths are made relative to the results file's directory."""
    result = {
        "schema": SCHEMA,
        "task": task,
        "table": table or default_table(task, model),
        "name": name,
        "timestamp": now_utc(),
        "model": model,
        "checkpoint": {"path": relative(checkpoint, results_path), "averaged_from": averaged_from},
        "data": relative(data, results_path),
        "settings": settings,
        "sentences": sentences,
        "metrics": metrics,
        "main": {"metric": main_metric, "value": main_value},
        "signature": signature,
        "files": {k: (relative(v, results_path) if isinstance(v, str) else [relative(p, results_path) for p in v])
                  for k, v in files.items()},
        "versions": versions(*extra_versions),
        "training": training_record(checkpoint),
    }
    validate(result)
    return result


def validate(result: Any, where: str = "results") -> Dict[str, Any]:
    if not isinstance(result, dict):
        raise OneLineError(f"{where}: not a JSON object")
    if result.get("schema") != SCHEMA:
        raise OneLineError(f"{where}: schema is {result.get('schema')!r}, expected {SCHEMA!r}")
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise OneLineError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(result["task"], str):  # the evaluators' names: evaluate/registry.py
        raise OneLineError(f"{where}: task must be an evaluator's name")
    if result["table"] not in TABLES:
        raise OneLineError(f"{where}: unknown table {result['table']!r}")
    if not isinstance(result["model"], dict) or not isinstance(result["model"].get("attention"), dict):
        raise OneLineError(f"{where}: model.attention must map positions to attention kinds")
    if not isinstance(result["metrics"], dict):
        raise OneLineError(f"{where}: metrics must be an object")
    return result


def save(result: Dict[str, Any], path: str) -> None:
    """Write the results file; the logs of the run it reports (proc.staged_logs) are put in place just before it."""
    validate(result)
    proc.install_staged_logs()
    write_atomic(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")


def load(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise OneLineError(f"{path}: not valid JSON ({e})") from None
    return validate(data, path)


def is_results(data: Any) -> bool:
    return isinstance(data, dict) and data.get("schema") == SCHEMA
