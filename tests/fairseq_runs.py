"""Reusable end-to-end runs of the real fairseq CLI on toy data: prepare, train, generate, interactive, eval-lm.

Tests of any attention kind call these with their own --arch / --*-attention-type flags.
"""
from pathlib import Path
from typing import Dict, List, Sequence

import sacrebleu

from kvattn_fairseq.data import toy as toydata
from kvattn_fairseq.evaluate.fairseq_tools import parse_eval_lm, parse_generate

from conftest import USER_DIR, run_cli

TRAIN_FLAGS = ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr-scheduler", "inverse_sqrt",
               "--warmup-updates", "100", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
               "--max-tokens", "2000", "--cpu", "--seed", "1", "--no-epoch-checkpoints", "--log-format", "simple",
               "--log-interval", "50", "--user-dir", USER_DIR]


def prepare_reverse(workdir: Path, train: int = 2000, valid: int = 200, test: int = 100) -> Path:
    raw = Path(toydata.write_reverse(str(workdir / "raw"), train, valid, test))
    bin_dir = workdir / "bin"
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", raw / "train",
            "--validpref", raw / "valid", "--testpref", raw / "test", "--destdir", bin_dir, "--joined-dictionary",
            "--workers", "1")
    return bin_dir


def prepare_lm(workdir: Path) -> Path:
    raw = Path(toydata.write_lm(str(workdir / "lmraw")))
    bin_dir = workdir / "lmbin"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.txt", "--validpref",
            raw / "valid.txt", "--testpref", raw / "test.txt", "--destdir", bin_dir, "--workers", "1")
    return bin_dir


def train_translation(bin_dir: Path, save_dir: Path, arch: str, *flags: str, epochs: int = 40,
                      lr: str = "1e-2") -> str:
    proc = run_cli("fairseq-train", bin_dir, "--arch", arch, "--save-dir", save_dir, "--max-epoch", epochs,
                   "--lr", lr, *TRAIN_FLAGS, *flags)
    return proc.stdout + proc.stderr


LM_FLAGS = [f for f in TRAIN_FLAGS
            if f not in ("--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1")]


def train_lm(bin_dir: Path, save_dir: Path, arch: str, *flags: str, epochs: int = 8) -> str:
    proc = run_cli("fairseq-train", bin_dir, "--task", "language_modeling", "--arch", arch, "--save-dir", save_dir,
                   "--max-epoch", epochs, "--lr", "5e-3", "--tokens-per-sample", "64", "--criterion",
                   "cross_entropy", *LM_FLAGS, *flags)
    return proc.stdout + proc.stderr


def generate(bin_dir: Path, checkpoint: Path, *flags: str, beam: int = 4) -> Dict[int, str]:
    """fairseq-generate; returns {sentence id: hypothesis} and checks that fairseq counted every one."""
    proc = run_cli("fairseq-generate", bin_dir, "--path", checkpoint, "--beam", beam, "--cpu", "--user-dir",
                   USER_DIR, *flags)
    hyps = parse_hypotheses(proc.stdout)
    _, summary = parse_generate(proc.stdout + proc.stderr)
    assert summary, proc.stderr[-2000:]
    assert summary["sentences"] == len(hyps)
    return hyps


def parse_hypotheses(stdout: str) -> Dict[int, str]:
    return parse_generate(stdout)[0]


def interactive(bin_dir: Path, checkpoint: Path, lines: Sequence[str], beam: int = 4) -> List[str]:
    proc = run_cli("fairseq-interactive", bin_dir, "--path", checkpoint, "--beam", beam, "--cpu", "--user-dir",
                   USER_DIR, "--source-lang", "src", "--target-lang", "tgt", input="".join(l + "\n" for l in lines))
    hyps = parse_hypotheses(proc.stdout)
    return [hyps[i] for i in range(len(lines))]


def read_lines(path: Path) -> List[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    return sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score


def eval_lm(bin_dir: Path, checkpoint: Path, *flags: str) -> Dict[str, float]:
    proc = run_cli("fairseq-eval-lm", bin_dir, "--path", checkpoint, "--cpu", "--user-dir", USER_DIR,
                   "--gen-subset", "test", "--batch-size", "8", *flags)
    out = proc.stdout + proc.stderr
    scores = parse_eval_lm(out)
    assert scores, out[-3000:]
    return scores
