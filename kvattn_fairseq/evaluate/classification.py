"""Per-position classification (task kv_position_classification: the Key-Value Transformer paper's synthetic
tasks as the paper ran them): the checkpoint labels every position of the test split, and the labels are scored
against the raw reference.

Input directory: DIR/data-bin (what the model reads) and the raw test set in the order of the binarized one,
DIR/test.tgt or DIR/raw/test.tgt (the layout `python -m kvattn_fairseq synthetic` writes): one line of labels per
sequence, label i for input position i.  The task's name is --synthetic-task, else the "task" of DIR/synthetic.json,
else the directory's name.

    position_accuracy  fraction of all test positions labelled right (the paper's accuracy: the mean over
                       positions of argmax == label; the main number)
    sequence_accuracy  fraction of test sequences with every position right

The model, the task's data loading and fairseq's batch iterator are fairseq's own (checkpoint_utils.
load_model_ensemble_and_task), run in this process; each sequence's predicted labels are written in test order and
every sequence must be labelled exactly once.
"""
import contextlib
import logging
import os
import sys
from typing import Dict, List

from ..util.errors import OneLineError
from ..util.io import write_atomic
from . import checkpoints, fairseq_tools as tools, inputs, results
from .synthetic import accuracy, recorded_task

NAME = "classify"  # python -m kvattn_fairseq evaluate classify ...
MAIN_METRIC = "position_accuracy"
HELP = "per-position classification (kv_position_classification): accuracy"
# this evaluator's own options and their defaults (its command line's too)
OPTIONS = {"gen_subset": "test", "synthetic_task": None, "cpu": False}


def add_arguments(p) -> None:
    p.add_argument("--gen-subset", default=OPTIONS["gen_subset"], help="which binarized split to label (default test)")
    p.add_argument("--synthetic-task", metavar="NAME",
                   help="reverse, sort, copy, swap, sub, ... (default: the data directory's name)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")


MODEL = "kvattn_classifier"


@contextlib.contextmanager
def fairseq_logs_here():
    """fairseq's log lines go to the stream that was stderr when fairseq set up logging; while fairseq runs in this
    process, they go to the current stderr (a step's log under paper_tables) instead."""
    logger = logging.getLogger("fairseq")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def predict(checkpoint: str, data_bin: str, subset: str, batch_size, max_tokens, cpu: bool) -> Dict[int, str]:
    """{sequence id: predicted labels, space-separated} for every sequence of `subset`."""
    with fairseq_logs_here():
        return _predict(checkpoint, data_bin, subset, batch_size, max_tokens, cpu)


def _predict(checkpoint: str, data_bin: str, subset: str, batch_size, max_tokens, cpu: bool) -> Dict[int, str]:
    import torch
    from fairseq import checkpoint_utils, utils

    import kvattn_fairseq  # noqa: F401  (registers the task and model)

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": data_bin})
    model = models[0].eval()
    use_cuda = torch.cuda.is_available() and not cpu
    if use_cuda:
        model.cuda()
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    batches = task.get_batch_iterator(
        dataset, max_tokens=max_tokens, max_sentences=batch_size if batch_size or max_tokens else
        tools.DEFAULT_BATCH_SIZE, max_positions=utils.resolve_max_positions(task.max_positions(),
                                                                            model.max_positions()),
        required_batch_size_multiple=1, seed=1).next_epoch_itr(shuffle=False)
    out: Dict[int, str] = {}
    with torch.no_grad():
        for sample in batches:
            sample = utils.move_to_cuda(sample) if use_cuda else sample
            best = model(**sample["net_input"]).argmax(-1).cpu()
            for row, sid in enumerate(sample["id"].tolist()):
                n = int(sample["net_input"]["src_lengths"][row])
                if sid in out:
                    raise OneLineError(f"sequence {sid} of '{subset}' was labelled twice")
                out[sid] = " ".join(task.class_symbol(int(c)) for c in best[row, :n])
    return out


def run(a) -> Dict:
    data = inputs.require_dir(a.data, "--data")
    data_bin = os.path.join(data, "data-bin")
    inputs.require_data_bin(data_bin, "--data", [a.gen_subset])
    raw = data if os.path.isfile(os.path.join(data, f"{a.gen_subset}.tgt")) else os.path.join(data, "raw")
    sources = inputs.read_lines(os.path.join(raw, f"{a.gen_subset}.src"), f"--data (inputs {a.gen_subset}.src)")
    ref_path = os.path.join(raw, f"{a.gen_subset}.tgt")
    refs: List[str] = inputs.read_lines(ref_path, f"--data (labels {a.gen_subset}.tgt)")
    if len(sources) != len(refs):
        raise OneLineError(f"--data: {ref_path} has {len(refs)} lines for {len(sources)} inputs")
    if a.extra:
        raise OneLineError(f"extra flags {' '.join(a.extra)}: classify runs no fairseq tool (use its own options)")
    checkpoint, averaged = checkpoints.resolve_checkpoint(a)
    info, saved_avg = checkpoints.checkpoint_info(checkpoint)
    if info["model"] != MODEL:
        raise OneLineError(f"--checkpoint {checkpoint}: a {info['model'] or info['arch']} model; classify scores "
                           f"{MODEL} models (fairseq-train --task kv_position_classification)")
    predicted = tools.in_order(predict(checkpoint, data_bin, a.gen_subset, a.batch_size, a.max_tokens, a.cpu),
                               len(refs), ref_path)
    scores = accuracy(predicted, refs)
    metrics = {"position_accuracy": scores["token_accuracy"], "sequence_accuracy": scores["sequence_accuracy"],
               "synthetic_task": a.synthetic_task or recorded_task(data) or
               os.path.basename(os.path.normpath(os.path.abspath(data)))}
    hyp_path = f"{inputs.stem(a.out)}.hyp.tgt"
    result = results.make(NAME, main_metric=MAIN_METRIC, name=inputs.experiment_name(a, checkpoint), model=info,
                          checkpoint=checkpoint,
                          averaged_from=averaged or saved_avg, data=data,
                          settings={"subset": a.gen_subset, **tools.batch_settings(a), "device":
                                    "cpu" if a.cpu else "cuda if available"},
                          metrics=metrics, main_value=metrics["position_accuracy"],
                          signature="per-position accuracy of the argmax label (whitespace tokens of the reference)",
                          sentences=len(predicted), files={"hypotheses": hyp_path, "logs": []}, results_path=a.out,
                          table=a.table)
    write_atomic(hyp_path, "".join(p + "\n" for p in predicted))
    results.save(result, a.out)
    return result


def summary_line(result: Dict) -> str:
    m = result["metrics"]
    return (f"{m['synthetic_task']}: position accuracy {100 * m['position_accuracy']:.2f}%, sequence accuracy "
            f"{100 * m['sequence_accuracy']:.2f}%; {result['sentences']} sequences")
