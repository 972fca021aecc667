"""CNN/DailyMail: fairseq-generate with the BART recipe's settings, sentencepiece decoding, ROUGE with rouge-score.

Input directory (scripts/prepare-cnndm.sh's output): DIR/data-bin (source-target, sentencepiece pieces),
DIR/spm.model, DIR/test.target (one reference summary per line) and DIR/test.ref.jsonl (one JSON list of reference
sentences per line, same order).

Generation defaults are fairseq's examples/bart/summarize.py CNN settings: beam 4, length penalty 2.0, min length
55, max length 140 (max_len_a 0, max_len_b 140), no-repeat n-gram size 3; sources longer than the model admits are
truncated (--truncate-source) rather than skipped, so every article gets a summary.

Scores: rouge-score's RougeScorer with use_stemmer=True (its default tokenizer lowercases and keeps [a-z0-9]).
ROUGE-1, ROUGE-2 and ROUGE-L compare each hypothesis with its line of test.target; ROUGE-Lsum (summary-level LCS)
compares the hypothesis split into sentences with the reference sentences of test.ref.jsonl, both newline-joined.
Hypothesis sentences are split by `split_sentences` below (rule-based, documented, no downloaded model; NLTK's
punkt needs data that cannot be fetched here).  Each number is the mean over examples of F1 (and of precision and
recall), ×100.
"""
import json
import os
import re
from typing import Dict, List, Sequence

from ..util.errors import OneLineError
from . import fairseq_tools as tools, generation, inputs
from .wmt import spm_decode

NAME = "cnndm"  # python -m kvattn_fairseq evaluate cnndm ...
MAIN_METRIC = "rougeLsum"
HELP = "CNN/DailyMail: ROUGE-1/2/L/Lsum"
# this evaluator's own options and their defaults (its command line's too)
OPTIONS = {"beam": 4, "lenpen": 2.0, "gen_subset": "test", "min_len": 55, "max_len_b": 140, "no_repeat_ngram_size": 3,
           "no_truncate_source": False}


def add_arguments(p) -> None:
    generation.add_arguments(p, OPTIONS)
    p.add_argument("--min-len", type=int, default=OPTIONS["min_len"],
                   help=f"minimum summary length in tokens (default {OPTIONS['min_len']})")
    p.add_argument("--max-len-b", type=int, default=OPTIONS["max_len_b"],
                   help=f"maximum summary length in tokens (default {OPTIONS['max_len_b']})")
    p.add_argument("--no-repeat-ngram-size", type=int, default=OPTIONS["no_repeat_ngram_size"],
                   help=f"default {OPTIONS['no_repeat_ngram_size']}")
    p.add_argument("--no-truncate-source", action="store_true",
                   help="do not pass --truncate-source (a too-long article then stops generation with an error)")


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# A sentence ends at . ! or ? (with any closing quotes or brackets after it), followed by whitespace and then
# something that starts a sentence: an upper-case letter, a digit, or an opening quote / bracket.
_BOUNDARY = re.compile(r"([.!?][\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
SPLITTER = ("rule-based: split after . ! ? (and closing quotes/brackets) before an upper-case letter, digit or "
            "opening quote")


def split_sentences(text: str) -> List[str]:
    """Split a summary into sentences (see SPLITTER); never returns an empty list for non-empty text."""
    text = " ".join(text.split())
    if not text:
        return []
    return [s.strip() for s in _BOUNDARY.sub("\\1\n", text).split("\n") if s.strip()]


def read_reference_sentences(path: str) -> List[List[str]]:
    refs = []
    for i, line in enumerate(inputs.read_lines(path, "--data (reference sentences test.ref.jsonl)"), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise OneLineError(f"{path}:{i}: not a JSON list of sentences ({e.msg})") from None
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise OneLineError(f"{path}:{i}: expected a JSON list of sentence strings")
        refs.append(value)
    return refs


def rouge(hyps: Sequence[str], refs: Sequence[str], ref_sentences: Sequence[Sequence[str]]) -> Dict:
    """Mean P/R/F ×100 per ROUGE type; rougeLsum on newline-joined sentences."""
    from rouge_score import rouge_scorer

    plain = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    summary = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    totals = {t: {"p": 0.0, "r": 0.0, "f": 0.0} for t in ROUGE_TYPES}
    for hyp, ref, ref_sents in zip(hyps, refs, ref_sentences):
        scores = plain.score(ref, hyp)  # reference first
        scores.update(summary.score("\n".join(ref_sents), "\n".join(split_sentences(hyp))))
        for t in ROUGE_TYPES:
            totals[t]["p"] += scores[t].precision
            totals[t]["r"] += scores[t].recall
            totals[t]["f"] += scores[t].fmeasure
    n = max(len(hyps), 1)
    return {t: {k: round(100 * v / n, 2) for k, v in totals[t].items()} for t in ROUGE_TYPES}


def run(a) -> Dict:
    data = inputs.require_dir(a.data, "--data")
    data_bin = os.path.join(data, "data-bin")
    inputs.require_data_bin(data_bin, "--data", [a.gen_subset])
    spm_model = inputs.require_file(os.path.join(data, "spm.model"), "--data (sentencepiece model)")
    target_path = os.path.join(data, f"{a.gen_subset}.target")
    refs = inputs.read_lines(target_path, f"--data (reference summaries {a.gen_subset}.target)")
    ref_path = os.path.join(data, f"{a.gen_subset}.ref.jsonl")
    ref_sentences = read_reference_sentences(ref_path)
    if len(ref_sentences) != len(refs):
        raise OneLineError(f"{ref_path} has {len(ref_sentences)} examples but {target_path} has {len(refs)}")
    tools.check_extra_flags(a.extra, tools.MANAGED_GENERATE_FLAGS + tools.DETOK_FLAGS + (
        "--min-len", "--max-len-a", "--max-len-b", "--no-repeat-ngram-size", "--truncate-source"), {
        **{f: "the evaluator decodes sentencepiece itself with DIR/spm.model" for f in tools.DETOK_FLAGS}})
    flags = ["--min-len", str(a.min_len), "--max-len-a", "0", "--max-len-b", str(a.max_len_b),
             "--no-repeat-ngram-size", str(a.no_repeat_ngram_size)]
    if not a.no_truncate_source:
        flags.append("--truncate-source")
    gen = generation.generate_in_order(a, data_bin, target_path, len(refs), flags)
    detok = spm_decode(spm_model, gen.hypotheses)
    scores = rouge(detok, refs, ref_sentences)
    metrics = dict(scores)
    metrics["sentence_splitter"] = SPLITTER
    settings = {"min_len": a.min_len, "max_len_b": a.max_len_b, "no_repeat_ngram_size": a.no_repeat_ngram_size,
                "truncate_source": not a.no_truncate_source, "detokenizer": "sentencepiece (DIR/spm.model)"}
    signature = "rouge-score use_stemmer=True; F1 x100, mean over examples; rougeLsum on newline-split sentences"
    return generation.save(a, NAME, MAIN_METRIC, gen, data=data, hyp_suffix="txt", hypotheses=detok, settings=settings,
                           metrics=metrics, main_value=scores["rougeLsum"]["f"], signature=signature,
                           extra_versions=("rouge-score", "sentencepiece"))


def summary_line(result: Dict) -> str:
    m = result["metrics"]
    return (f"ROUGE F1 x100: R-1 {m['rouge1']['f']:.2f}, R-2 {m['rouge2']['f']:.2f}, R-L {m['rougeL']['f']:.2f}, "
            f"R-Lsum {m['rougeLsum']['f']:.2f}; {result['sentences']} summaries")
