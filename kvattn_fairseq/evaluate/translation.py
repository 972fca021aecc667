"""sacreBLEU of fairseq-generate on a test set written in whitespace-separated symbols (the generated reversal task):
no subword model to undo, so the hypotheses are scored as fairseq prints them.  A pure function, checkpoint and data
in, metrics out; the experiments that need it (the demo) call it from their own steps."""
from typing import Dict, Sequence

from . import fairseq_tools as tools, inputs
from .wmt import sacrebleu_score


def sacrebleu_of_generate(checkpoint: str, data_bin: str, reference: str, log: str, *, beam: int = 4,
                          batch_size: int = 64, subset: str = "test", flags: Sequence[str] = ()) -> Dict:
    """fairseq-generate --beam `beam` on split `subset` (its log kept at `log`), the hypotheses in the order of
    `reference` (one line per sentence, every sentence accounted for), their corpus sacreBLEU (13a, sacreBLEU's
    default) with its signature, and fairseq-generate's own speed line."""
    refs = inputs.read_lines(reference, "reference")
    by_id, speed, args = tools.generate(data_bin, checkpoint, subset=subset, beam=beam, lenpen=1.0,
                                        batch_size=batch_size, max_tokens=None, flags=flags, extra=(), log_path=log)
    hyps = tools.in_order(by_id, len(refs), reference)
    bleu, signature = sacrebleu_score(hyps, refs)
    return {"sacrebleu": round(bleu["score"], 2), "signature": signature, "sacrebleu_detail": bleu["detail"],
            "sentences": len(hyps), "decode_sentences_per_s": speed.get("sentences_per_s"),
            "decode_tokens_per_s": speed.get("tokens_per_s"), "fairseq_flags": tools.settings_flags(args)}
