"""The part the generation-based evaluators (wmt, cnndm, synthetic) share: decode the test set with fairseq-generate
in reference order, then write the hypotheses and the results file."""
import dataclasses
from typing import Dict, List, Optional, Sequence

from ..util.io import write_atomic

from . import checkpoints, fairseq_tools as tools, inputs, results

GENERATE_SPEED = ("sentences_per_s", "tokens_per_s", "seconds")


def add_arguments(p, options: Dict) -> None:
    """The generation evaluators' beam, length penalty and split, with that evaluator's defaults."""
    p.add_argument("--beam", type=int, default=options["beam"], help=f"beam size (default {options['beam']})")
    p.add_argument("--lenpen", type=float, default=options["lenpen"],
                   help=f"length penalty (default {options['lenpen']})")
    p.add_argument("--gen-subset", default=options["gen_subset"], help="which binarized split to decode (default "
                                                                       f"{options['gen_subset']})")


@dataclasses.dataclass
class Generation:
    hypotheses: List[str]            # one per reference line, in the reference's order
    checkpoint: str
    averaged_from: Optional[List[str]]
    model: Dict
    log: str
    summary: Dict
    args: List[str]


def generate_in_order(a, data_bin: str, reference: str, n_expected: int, flags: Sequence[str] = ()) -> Generation:
    checkpoint, averaged = checkpoints.resolve_checkpoint(a)
    info, saved_avg = checkpoints.checkpoint_info(checkpoint)
    log = f"{inputs.stem(a.out)}.generate-{a.gen_subset}.log"
    hyps, summary, args = tools.generate(
        data_bin, checkpoint, subset=a.gen_subset, beam=a.beam, lenpen=a.lenpen, batch_size=a.batch_size,
        max_tokens=a.max_tokens, flags=list(flags), extra=a.extra, log_path=log)
    return Generation(tools.in_order(hyps, n_expected, reference), checkpoint, averaged or saved_avg, info, log,
                      summary, args)


def save(a, task: str, main_metric: str, gen: Generation, *, data: str, hyp_suffix: str, hypotheses: Sequence[str],
         settings: Dict, metrics: Dict, main_value: float, signature: str, extra_versions: Sequence[str] = ()) -> Dict:
    """Hypotheses to <out stem>.hyp.<suffix>, then the results file (both atomically); returns the results."""
    metrics["generate"] = {k: gen.summary.get(k) for k in GENERATE_SPEED}
    settings = {"subset": a.gen_subset, "beam": a.beam, "lenpen": a.lenpen, **settings, **tools.batch_settings(a),
                "fairseq_flags": tools.settings_flags(gen.args)}
    hyp_path = f"{inputs.stem(a.out)}.hyp.{hyp_suffix}"
    result = results.make(task, main_metric=main_metric, name=inputs.experiment_name(a, gen.checkpoint),
                          model=gen.model,
                          checkpoint=gen.checkpoint, averaged_from=gen.averaged_from, data=data, settings=settings,
                          metrics=metrics, main_value=main_value, signature=signature, sentences=len(hypotheses),
                          files={"hypotheses": hyp_path, "logs": [gen.log]}, results_path=a.out, table=a.table,
                          extra_versions=extra_versions)
    write_atomic(hyp_path, "".join(h + "\n" for h in hypotheses))
    results.save(result, a.out)
    return result
