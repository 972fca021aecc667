"""The Key-Value Transformer synthetic tasks as the paper ran them: task kv_position_classification reads inputs and
per-position labels, model kvattn_classifier labels every position with any encoder-capable attention kind,
criterion position_classification counts what the accuracies need, and `python -m kvattn_fairseq.evaluate
classify` scores a checkpoint against the raw labels."""
import json
import os
from pathlib import Path

import pytest
import torch

import kvattn_fairseq
from fairseq import checkpoint_utils, options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from kvattn_fairseq.data import synthetic
from kvattn_fairseq.evaluate import __main__ as evaluate
from kvattn_fairseq.modules.registry import kinds_at
from kvattn_fairseq.tasks.position_accuracy import PositionClassificationCriterion
from kvattn_fairseq.tasks.position_classification import IGNORE, PositionClassificationConfig, \
    PositionClassificationTask
from kvattn_fairseq.util.errors import OneLineError

from conftest import build_model, run_cli

ENCODER_KINDS = kinds_at("encoder")


@pytest.fixture(scope="module")
def copy_data(tmp_path_factory):
    """python -m kvattn_fairseq synthetic's output for the copy task, sequences of 5 to 8 symbols (so batches pad)."""
    out = tmp_path_factory.mktemp("cls") / "copy"
    synthetic.generate(str(out), "copy", train=300, valid=20, test=30, min_len=5, max_len=8)
    return out


def _task(data: Path) -> PositionClassificationTask:
    return PositionClassificationTask.setup_task(PositionClassificationConfig(data=str(data / "data-bin")))


def test_batches_hold_the_raw_labels_position_by_position(copy_data):
    task = _task(copy_data)
    assert task.num_classes == 10 and [task.class_symbol(c) for c in range(10)] == [str(v) for v in range(10)]
    dataset = task.load_dataset("test")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    labels = (copy_data / "raw" / "test.tgt").read_text().splitlines()
    inputs = (copy_data / "raw" / "test.src").read_text().splitlines()
    for row, sid in enumerate(batch["id"].tolist()):
        n = len(inputs[sid].split())
        assert batch["net_input"]["src_lengths"][row] == n
        assert task.source_dictionary.string(batch["net_input"]["src_tokens"][row, :n]) == inputs[sid]
        target = batch["target"][row]
        assert [task.class_symbol(int(c)) for c in target[:n]] == labels[sid].split()
        assert (target[n:] == IGNORE).all()
        assert (batch["net_input"]["src_tokens"][row, n:] == task.source_dictionary.pad()).all()  # right-padded
    assert batch["ntokens"] == sum(len(line.split()) for line in inputs)


def _binarize(raw: Path, out: Path, dict_path: Path) -> None:
    from fairseq_cli import preprocess

    args = options.get_preprocessing_parser().parse_args([
        "--source-lang", "src", "--target-lang", "tgt", "--testpref", str(raw / "test"), "--destdir", str(out),
        "--joined-dictionary", "--srcdict", str(dict_path), "--workers", "1"])
    preprocess.main(args)


def test_labels_that_do_not_match_the_inputs_are_refused_in_one_line(copy_data, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "test.src").write_text("1 2 3\n4 5\n")
    (raw / "test.tgt").write_text("1 2 3\n4 5 6\n")
    _binarize(raw, tmp_path / "data-bin", copy_data / "raw" / "dict.txt")
    with pytest.raises(OneLineError, match=r"test\.src-tgt\.tgt: line 2 has 3 labels for 2 input symbols"):
        _task(tmp_path).load_dataset("test")
    with pytest.raises(OneLineError, match="no 'valid' split"):
        _task(tmp_path).load_dataset("valid")
    with pytest.raises(OneLineError, match="dict.src.txt is missing"):
        _task(tmp_path / "nowhere")


def _model(kind: str, task):
    model = build_model("kv_position_classifier", "--encoder-attention-type", kind, "--attention-window", "3",
                        dictionary=task.source_dictionary)
    head = model.head.out
    assert head.out_features == task.num_classes  # the task's classes, not the vocabulary
    return model.eval()


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_every_encoder_kind_labels_each_position_as_it_would_alone(kind, copy_data):
    """A sequence right-padded in a batch gets the labels it gets alone: padding never leaks into real positions."""
    task = _task(copy_data)
    model = _model(kind, task)
    gen = torch.Generator().manual_seed(3)
    lengths = [7, 4, 6]
    tokens = torch.full((3, 7), task.source_dictionary.pad())
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(task.source_dictionary.nspecial, len(task.source_dictionary), (n,),
                                      generator=gen)
    with torch.no_grad():
        batched = model(tokens, torch.tensor(lengths))
        assert batched.shape == (3, 7, task.num_classes)
        for i, n in enumerate(lengths):
            alone = model(tokens[i:i + 1, :n], torch.tensor([n]))
            torch.testing.assert_close(batched[i:i + 1, :n], alone, atol=1e-5, rtol=1e-5)


def test_the_criterion_counts_positions_and_whole_sequences():
    class Fixed(torch.nn.Module):
        def forward(self, src_tokens, src_lengths):
            return torch.nn.functional.one_hot(src_tokens, 4).float() * 10  # predicts the input symbol

    target = torch.tensor([[1, 2, 3], [0, 2, IGNORE], [3, 3, 3]])
    tokens = torch.tensor([[1, 2, 3], [0, 1, 0], [3, 3, 0]])
    sample = {"net_input": {"src_tokens": tokens, "src_lengths": torch.tensor([3, 2, 3])}, "target": target,
              "ntokens": 8}
    loss, size, log = PositionClassificationCriterion(None)(Fixed(), sample)
    assert size == 8 and (log["n_correct"], log["n_seq_correct"], log["n_sequences"]) == (6, 1, 3)
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.one_hot(tokens, 4).float().flatten(0, 1) * 10,
                                                 target.flatten(), ignore_index=IGNORE, reduction="sum")
    torch.testing.assert_close(loss, expected)


def _train_in_process(data: Path, save: Path, kind: str, *flags: str) -> None:
    """fairseq-train's main (fairseq_cli/train.py) in this process: its argument parsing, trainer, validation and
    checkpoints, without starting a process per kind."""
    from fairseq_cli import train

    argv = [str(data / "data-bin"), "--user-dir", kvattn_fairseq.USER_DIR, "--task", "kv_position_classification",
            "--arch", "kv_position_classifier", "--criterion", "position_classification", "--encoder-attention-type",
            kind, "--attention-window", "3", "--optimizer", "adam", "--batch-size", "16", "--save-dir", str(save),
            "--cpu", "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple", *flags]
    if hasattr(checkpoint_utils.save_checkpoint, "best"):  # fairseq keeps the best loss across runs in a process
        del checkpoint_utils.save_checkpoint.best
    train.main(convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv)))


def _evaluate(data: Path, checkpoint: Path, out: Path, capsys) -> dict:
    code = evaluate.main(["classify", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
                          "--cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_encoder_kind_trains_and_is_scored(copy_data, tmp_path, capsys):
    refs = (copy_data / "raw" / "test.tgt").read_text().splitlines()
    for kind in ENCODER_KINDS:
        _train_in_process(copy_data, tmp_path / kind, kind, "--lr", "1e-3", "--max-update", "2")
        r = _evaluate(copy_data, tmp_path / kind / "checkpoint_last.pt", tmp_path / f"{kind}.json", capsys)
        hyps = (tmp_path / f"{kind}.hyp.tgt").read_text().splitlines()
        assert r["table"] == "kv_classification" and r["model"]["attention"] == {"encoder": kind}, kind
        assert r["sentences"] == len(hyps) == len(refs) == 30
        assert [len(h.split()) for h in hyps] == [len(t.split()) for t in refs]  # a label for every position
        right = sum(a == b for h, t in zip(hyps, refs) for a, b in zip(h.split(), t.split()))
        assert r["metrics"]["position_accuracy"] == right / sum(len(t.split()) for t in refs) == r["main"]["value"]
        assert r["metrics"]["sequence_accuracy"] == sum(h == t for h, t in zip(hyps, refs)) / 30
        assert r["metrics"]["synthetic_task"] == "copy"


@pytest.mark.slow
def test_the_classifier_learns_the_copy_task_and_bad_input_is_one_line(copy_data, tmp_path, capsys):
    """Each sequence's own labels reach the model: softmax attention learns to copy its input within 150 updates
    (labels of other sequences would leave it at chance, 10%)."""
    _train_in_process(copy_data, tmp_path / "ckpt", "softmax", "--lr", "3e-3", "--max-update", "150", "--dropout",
                      "0")
    checkpoint = tmp_path / "ckpt" / "checkpoint_last.pt"
    r = _evaluate(copy_data, checkpoint, tmp_path / "r.json", capsys)
    assert r["metrics"]["position_accuracy"] >= 0.95 and r["metrics"]["sequence_accuracy"] >= 0.7
    assert r["model"]["arch"] == "kv_position_classifier" and r["main"]["metric"] == "position_accuracy"

    seq2seq = tmp_path / "seq2seq.pt"  # the header of a checkpoint of another model is enough to refuse it
    torch.save({"model": {}, "cfg": {"model": {"_name": "kv_synthetic", "encoder_attention_type": "kv"}}}, seq2seq)
    for argv, message in ((["--checkpoint", str(seq2seq)], "classify scores kvattn_classifier models"),
                          (["--checkpoint", str(checkpoint), "--", "--beam", "4"], "classify runs no fairseq tool"),
                          (["--checkpoint", str(checkpoint), "--gen-subset", "train2"], "no binarized 'train2'")):
        out = tmp_path / "bad.json"
        code = evaluate.main(["classify", "--data", str(copy_data), "--out", str(out), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert not out.exists()
    assert not os.path.exists(tmp_path / "bad.hyp.tgt")


@pytest.mark.slow
def test_fairseq_train_on_missing_data_is_one_line(tmp_path):
    proc = run_cli("fairseq-train", tmp_path / "no-data", "--user-dir", kvattn_fairseq.USER_DIR, "--task",
                   "kv_position_classification", "--arch", "kv_position_classifier", "--criterion",
                   "position_classification", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "8", "--cpu",
                   "--save-dir", tmp_path / "ckpt", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].endswith("dict.src.txt is missing (expected the binarized data of python -m "
                              "kvattn_fairseq synthetic, DIR/data-bin; --source-lang/--target-lang name the suffixes)")
