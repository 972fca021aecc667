"""Associative recall accuracy of a checkpoint on a data directory of kvattn_fairseq/data/recall.py: a pure function
of the two.  fairseq loads the model and the task (checkpoint_utils.load_model_ensemble_and_task), the task builds
the test batches (targets only at answers, tasks/associative_recall.py), and one forward pass per batch (teacher
forcing, as in training) gives the argmax at every answer.

    accuracy          share of answers right
    beyond.accuracy   share right among answers whose key last occurred more than W positions back (W: the data's
                      window), i.e. whose key-value pair lies outside the query's window
    within.accuracy   the same for the rest (the repeated queries); null when there are none
    chance            1 / the number of values
"""
import os
from typing import Dict

from ..data import recall as recall_data
from ..util.errors import OneLineError, StepFailed
from .classification import fairseq_logs_here


def _share(right: int, total: int) -> Dict:
    return {"answers": total, "right": right, "accuracy": right / total if total else None}


def evaluate(checkpoint: str, data: str, setting: str, batch_size: int = 64) -> Dict:
    """Scores on the test subset of `setting` (e.g. "pairs8-len256", a key of recall.json's test_subsets)."""
    with fairseq_logs_here():
        return _evaluate(checkpoint, data, setting, batch_size)


def _evaluate(checkpoint: str, data: str, setting: str, batch_size: int) -> Dict:
    import torch
    from fairseq import checkpoint_utils, utils

    import kvattn_fairseq  # noqa: F401  (registers the task and the model)

    meta = recall_data.read_settings(data)
    if setting not in meta["test_subsets"]:
        raise OneLineError(f"--data {data} has no test set for {setting} (it has {', '.join(meta['test_subsets'])})")
    subset, window = meta["test_subsets"][setting], int(meta["window"])
    expected = next(s["test"] for s in meta["settings"] if recall_data.name_of(s) == setting)
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": os.path.join(data, "data-bin")})
    model = models[0].eval()
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    batches = task.get_batch_iterator(
        dataset, max_sentences=batch_size, max_positions=utils.resolve_max_positions(task.max_positions(),
                                                                                    model.max_positions()),
        required_batch_size_multiple=1, seed=1).next_epoch_itr(shuffle=False)
    pad = task.target_dictionary.pad()
    counts = {"all": [0, 0], "beyond": [0, 0], "within": [0, 0]}
    sequences = 0
    with torch.no_grad():
        for sample in batches:
            target = sample["target"]
            right = model(**sample["net_input"])[0].argmax(-1) == target
            scored = target.ne(pad)
            far = sample["recall_distance"] > window
            for name, mask in (("all", scored), ("beyond", scored & far), ("within", scored & ~far)):
                counts[name][0] += int((right & mask).sum())
                counts[name][1] += int(mask.sum())
            sequences += target.size(0)
    if sequences != expected:  # fairseq skips what does not fit the model's positions
        raise StepFailed(f"scored {sequences} of the {expected} test sequences of {setting} in {data}: the model "
                         f"admits fewer positions than they have")
    return {"accuracy": _share(*counts["all"])["accuracy"], "answers": counts["all"][1],
            "beyond": _share(*counts["beyond"]), "within": _share(*counts["within"]), "window": window,
            "chance": 1.0 / int(meta["values"]), "sequences": sequences, "setting": setting}

