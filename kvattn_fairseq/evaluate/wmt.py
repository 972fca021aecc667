"""WMT En-De: fairseq-generate, sentencepiece decoding, detokenized sacreBLEU and compound-split tokenized BLEU.

Input directory (scripts/prepare-wmt16-en-de.sh's output): DIR/data-bin (binarized sentencepiece pieces, joined
dictionary), DIR/spm.model, DIR/test.en and DIR/test.de (raw, detokenized, in the order of the binarized test set).

Main number: sacreBLEU on detokenized text against DIR/test.de (default 13a tokenization), with its signature.
Secondary, labelled number ("tok-BLEU, compound split"), for comparison with the AIAYN / tensor2tensor / fairseq
Scaling-NMT / MemSizer lineage: hypotheses and references are Moses-tokenized (sacremoses, `tokenizer.perl -l de`
without -a, as tensor2tensor's get_ende_bleu.sh), compounds are split with `(\\S)-(\\S)` -> `\\1 ##AT##-##AT## \\2`
(fairseq's scripts/compound_split_bleu.sh), then BLEU is computed on whitespace tokens without smoothing
(multi-bleu.perl / fairseq-score).  It inflates BLEU and is not comparable with sacreBLEU; fairseq's README calls it
"not recommended".  Without sacremoses installed, sacreBLEU's 13a tokenizer stands in and the result says so.
"""
import os
import re
from typing import Dict, List, Sequence, Tuple

from ..util.errors import OneLineError
from . import fairseq_tools as tools, generation, inputs

NAME = "wmt"  # python -m kvattn_fairseq evaluate wmt ...
MAIN_METRIC = "sacrebleu"
HELP = "WMT En-De: sacreBLEU (+ compound-split tok-BLEU)"
# this evaluator's own options and their defaults (its command line's too)
OPTIONS = {"beam": 4, "lenpen": 0.6, "gen_subset": "test", "target_lang": "de", "sacrebleu_tokenize": "13a"}


def add_arguments(p) -> None:
    generation.add_arguments(p, OPTIONS)
    p.add_argument("--target-lang", default=OPTIONS["target_lang"],
                   help="reference suffix DIR/test.LANG and tokenizer language")
    p.add_argument("--sacrebleu-tokenize", default=OPTIONS["sacrebleu_tokenize"],
                   help=f"sacreBLEU tokenizer (default {OPTIONS['sacrebleu_tokenize']})")


COMPOUND = re.compile(r"(\S)-(\S)")


def spm_decode(model_path: str, lines: Sequence[str]) -> List[str]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(model_path)
    except (OSError, RuntimeError) as e:
        raise OneLineError(f"{model_path}: not a sentencepiece model ({str(e).splitlines()[0]})") from None
    return [sp.DecodePieces(line.split()) for line in lines]


def compound_split(text: str) -> str:
    return COMPOUND.sub(r"\1 ##AT##-##AT## \2", text)


def moses_tokenizer(lang: str):
    """(tokenize function, label): sacremoses' Moses tokenizer, or sacreBLEU's 13a when sacremoses is missing."""
    try:
        from sacremoses import MosesTokenizer
    except ImportError:
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

        return Tokenizer13a(), "13a (sacremoses not installed: the Moses tokenizer was not used)"
    tok = MosesTokenizer(lang=lang)
    return (lambda s: tok.tokenize(s, return_str=True, escape=True)), f"moses -l {lang} (sacremoses)"


def sacrebleu_score(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> Tuple[Dict, str]:
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=tokenize)
    score = metric.corpus_score(list(hyps), [list(refs)])
    detail = {"score": score.score, "bp": score.bp, "sys_len": score.sys_len, "ref_len": score.ref_len,
              "precisions": [round(p, 4) for p in score.precisions]}
    return {"score": score.score, "detail": detail}, str(metric.get_signature())


def tok_bleu_compound_split(hyps: Sequence[str], refs: Sequence[str], lang: str = "de") -> Dict:
    from sacrebleu.metrics import BLEU

    tokenize, label = moses_tokenizer(lang)
    h = [compound_split(tokenize(x)) for x in hyps]
    r = [compound_split(tokenize(x)) for x in refs]
    metric = BLEU(tokenize="none", smooth_method="none", force=True)
    score = metric.corpus_score(h, [r])
    return {"score": score.score, "tokenizer": label, "signature": str(metric.get_signature()) + "|compound:##AT##"}


def run(a) -> Dict:
    data = inputs.require_dir(a.data, "--data")
    data_bin = os.path.join(data, "data-bin")
    inputs.require_data_bin(data_bin, "--data", [a.gen_subset])
    spm_model = inputs.require_file(os.path.join(data, "spm.model"), "--data (sentencepiece model)")
    ref_path = os.path.join(data, f"{a.gen_subset}.{a.target_lang}")
    refs = inputs.read_lines(ref_path, f"--data (reference {a.gen_subset}.{a.target_lang})")
    tools.check_extra_flags(a.extra, tools.MANAGED_GENERATE_FLAGS + tools.DETOK_FLAGS, {
        **{f: "the evaluator decodes sentencepiece itself with DIR/spm.model" for f in tools.DETOK_FLAGS}})
    gen = generation.generate_in_order(a, data_bin, ref_path, len(refs))
    detok = spm_decode(spm_model, gen.hypotheses)

    bleu, signature = sacrebleu_score(detok, refs, a.sacrebleu_tokenize)
    tok = tok_bleu_compound_split(detok, refs, a.target_lang)
    metrics = {"sacrebleu": round(bleu["score"], 2), "sacrebleu_signature": signature,
               "sacrebleu_detail": bleu["detail"], "tok_bleu_compound_split": round(tok["score"], 2),
               "tok_bleu_tokenizer": tok["tokenizer"], "tok_bleu_signature": tok["signature"]}
    return generation.save(a, NAME, MAIN_METRIC, gen, data=data, hyp_suffix=a.target_lang, hypotheses=detok,
                           settings={"detokenizer": "sentencepiece (DIR/spm.model)"}, metrics=metrics,
                           main_value=metrics["sacrebleu"], signature=signature,
                           extra_versions=("sacrebleu", "sacremoses", "sentencepiece"))


def summary_line(result: Dict) -> str:
    m = result["metrics"]
    return (f"sacreBLEU {m['sacrebleu']:.2f} ({m['sacrebleu_signature']}); tok-BLEU compound split "
            f"{m['tok_bleu_compound_split']:.2f} [secondary, {m['tok_bleu_tokenizer']}]; {result['sentences']} "
            f"sentences")
