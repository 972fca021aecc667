"""`make demo`: fairseq's vanilla transformer against the plugin's constant-state decoder, on generated data, on CPU.

    python -m kvattn_fairseq demo                                    # what `make demo` runs: demo_out/
    python -m kvattn_fairseq demo --models vanilla,window,memsizer   # MemSizer too

Generates a sequence-reversal translation task (data/toy.py), binarizes it with fairseq-preprocess, trains fairseq's
own `transformer` and the plugin's `kvattn_transformer` of the same sizes and settings with a sliding window of
W = 4 positions in decoder self-attention (softmax cross-attention, whose cache is the source's keys and values)
through fairseq-train, decodes both with fairseq-generate --beam 4 (sacreBLEU with its signature:
evaluate/translation.py), measures the decoding state one hypothesis carries with fairseq's incremental decoder
(evaluate/state.py), and prints them side by side with decoding speed.  `--models vanilla,window,memsizer` adds
MemSizer in decoder self- and cross-attention (the MemSizer paper's MT layout).

The steps run on the experiment spine (run/spine.py): the data, then per model its training (fairseq's progress
shown as it trains), its evaluation and its state, then results.json and table.md, made at every run.  A rerun skips
what is done, and says which results it reused, and continues an interrupted training from checkpoint_last.pt; one
with other settings (--epochs, --train-size) is refused in one line unless --force, which makes those steps again.
The committed copy of results.json and table.md is docs/demo/ (the README's figures are generated from it).
"""
import calendar
import json
import os
import platform
import time
from typing import Dict, List, Sequence

from ...data import toy
from ...util import proc
from ...util.cli import ArgumentParser, positive_int, run_main
from ...util.io import write_atomic
from ...util.markdown import table
from ..spine import Context, Runner, Step, in_process, work_dir
from ..steps import train_step
from ..train import Command

PROG = "python -m kvattn_fairseq demo"
SIZE = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
        "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "4",
        "--decoder-attention-heads", "4", "--dropout", "0.1"]
WINDOW = "4"  # the targets are 3-15 tokens long: a window of 4 keeps far fewer than the whole output
MODELS = {
    "vanilla": ("vanilla transformer", ["--arch", "transformer"]),
    "window": (f"window decoder, W={WINDOW}", ["--arch", "kvattn_transformer", "--decoder-attention-type", "window",
                                             "--attention-window", WINDOW, "--cross-attention-type", "softmax"]),
    "memsizer": ("MemSizer decoder", ["--arch", "memsizer_tiny", "--memsizer-self-slots", "4",
                                      "--memsizer-cross-slots", "32"]),
}
TRAIN = ["--share-all-embeddings", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-2",
         "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--criterion", "label_smoothed_cross_entropy",
         "--label-smoothing", "0.1", "--max-tokens", "2000", "--cpu", "--seed", "1", "--no-epoch-checkpoints",
         "--log-format", "simple", "--log-interval", "1000", "--num-workers", "0"]
DATA = dict(valid=300, test=500, min_len=3, max_len=15, seed=1)
EVALUATE = {"checkpoint": "checkpoint_best.pt", "beam": 4, "batch_size": 64, "flags": ["--cpu", "--num-workers", "0"]}
STATE_AFTER = (16, 1000)  # output tokens: the task's longest target (15 + end of sentence), and a long generation


def train_flags(key: str, epochs: int, save: str) -> List[str]:
    return [*MODELS[key][1], *SIZE, *TRAIN, "--max-epoch", str(epochs), "--save-dir", save]


def steps(a, work: str) -> List[Step]:
    """The data, then per model its training, its evaluation and its state, then results.json and the table."""
    sizes = dict(DATA, train=a.train_size)

    def make_data(ctx: Context) -> None:
        toy.prepare_reverse(ctx.out, workers=2, **sizes)

    out = [Step("data", "data", {"task": "reverse", **sizes}, in_process(make_data, "data"),
                command="(in process: data/toy.py prepare_reverse: the reversal task, then fairseq-preprocess)")]
    data_bin = os.path.join(work, "data", "data-bin")
    for key in a.models:
        save = os.path.join("runs", key)
        args = [data_bin, "--user-dir", _user_dir(), *train_flags(key, a.epochs, os.path.join(work, save))]
        train = train_step(f"train/{key}", save, Command([*proc.fairseq_tool("fairseq-train"), *args], [], args),
                           {"model": key, "flags": train_flags(key, a.epochs, "SAVE")}, needs=("data",))
        by_hand = [*proc.fairseq_tool("fairseq-generate"), data_bin, "--path",
                   os.path.join(work, save, EVALUATE["checkpoint"]), "--beam", EVALUATE["beam"], "--batch-size",
                   EVALUATE["batch_size"], *EVALUATE["flags"]]
        out += [train,
                Step(f"evaluate/{key}", os.path.join("scores", f"{key}.json"), EVALUATE,
                     in_process(_evaluator(key), f"evaluate {key}"), needs=("data", train.name),
                     command=proc.shell(by_hand) + "  # then sacreBLEU (evaluate/translation.py)"),
                Step(f"state/{key}", os.path.join("state", f"{key}.json"), {"after": list(STATE_AFTER)},
                     in_process(_state(key), f"state {key}"), needs=("data", train.name),
                     command="(in process: evaluate/state.py, fairseq's incremental decoder)")]
    out.append(Step("results", "results.json", {}, _summary(a.models, dict(sizes, epochs=a.epochs), time.time()),
                    needs=tuple(s.name for s in out), always=True))
    return out


def _user_dir() -> str:
    from ...util.paths import USER_DIR

    return USER_DIR


def _evaluator(key: str):
    def evaluate(ctx: Context) -> None:
        from ...evaluate.translation import sacrebleu_of_generate

        data = ctx.inputs["data"]
        scores = sacrebleu_of_generate(
            os.path.join(ctx.inputs[f"train/{key}"], EVALUATE["checkpoint"]), os.path.join(data, "data-bin"),
            os.path.join(data, "raw", "test.tgt"), os.path.splitext(ctx.log)[0] + ".generate.log",
            beam=EVALUATE["beam"], batch_size=EVALUATE["batch_size"], flags=EVALUATE["flags"])
        print(f"{key}: sacreBLEU {scores['sacrebleu']} ({scores['signature']})")
        write_atomic(ctx.out, json.dumps(scores, indent=2) + "\n")

    return evaluate


def longest_source(data: str) -> int:
    """Tokens of the longest test source, its end of sentence included: the source the state is measured with."""
    with open(os.path.join(data, "raw", "test.src"), encoding="utf-8") as f:
        return max(len(line.split()) for line in f) + 1


def _state(key: str):
    def measure(ctx: Context) -> None:
        from ...evaluate.state import state_bytes_after

        data = ctx.inputs["data"]
        source = longest_source(data)
        sizes = state_bytes_after(os.path.join(ctx.inputs[f"train/{key}"], EVALUATE["checkpoint"]), STATE_AFTER,
                                  source_tokens=source, data=os.path.join(data, "data-bin"))
        print(f"{key}: " + ", ".join(f"{b:,} B after {t} tokens" for t, b in sizes.items()))
        write_atomic(ctx.out, json.dumps({"source_tokens": source,
                                          "state_bytes_per_hypothesis": {str(t): b for t, b in sizes.items()},
                                          "machine": machine()}, indent=2) + "\n")

    return measure


def training_seconds(save: str) -> float:
    """fairseq's own training time of a run, kept in its last checkpoint across resumptions."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(os.path.join(save, "checkpoint_last.pt"))
    return round(float(state["extra_state"]["previous_training_time"]), 1)


def collect(work: str, models: Sequence[str]) -> Dict[str, Dict]:
    """Per model, by its display name: its scores, speed, state, training time and flags."""
    results = {}
    for key in models:
        with open(os.path.join(work, "scores", f"{key}.json"), encoding="utf-8") as f:
            scores = json.load(f)
        with open(os.path.join(work, "state", f"{key}.json"), encoding="utf-8") as f:
            state = json.load(f)
        results[MODELS[key][0]] = {
            "sacrebleu": scores["sacrebleu"], "signature": scores["signature"], "sentences": scores["sentences"],
            "decode_sentences_per_s": scores["decode_sentences_per_s"],
            "decode_tokens_per_s": scores["decode_tokens_per_s"],
            "train_seconds": training_seconds(os.path.join(work, "runs", key)),
            "state_bytes_per_hypothesis": state["state_bytes_per_hypothesis"], "source_tokens": state["source_tokens"],
            "flags": MODELS[key][1]}
    return results


def side_by_side(results: Dict[str, Dict]) -> List[str]:
    """The table the demo prints, in Markdown."""
    header = ["model", "sacreBLEU", "sent/s", "tok/s", *(f"state @{t} tok" for t in STATE_AFTER), "train s"]
    rows = [[name, f"{r['sacrebleu']:.1f}", f"{r['decode_sentences_per_s']:.1f}", f"{r['decode_tokens_per_s']:.0f}",
             *(f"{r['state_bytes_per_hypothesis'][str(t)]:,} B" for t in STATE_AFTER), f"{r['train_seconds']:.0f}"]
            for name, r in results.items()]
    first = next(iter(results.values()))
    return table(header, rows) + [
        "",
        f"state: bytes of decoding state one hypothesis holds after that many output tokens, for the longest test "
        f"source ({first['source_tokens'] - 1} tokens and its end of sentence); train s: fairseq's training time",
        f"sacreBLEU signature: {first['signature']}"]


def _utc(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def made_earlier(records: Dict[str, Dict], started: float) -> List[str]:
    """The steps (of those `records` describe) that an earlier run finished, before this one started at `started`."""
    return [name for name, rec in records.items()
            if rec and rec.get("finished") and _utc(rec["finished"]) < int(started)]


def steps_seconds(records: Dict[str, Dict]) -> float:
    """The steps' times added up, from their records: the demo's own time, whichever runs made its steps (a training
    interrupted and resumed counts from its first start)."""
    return sum(_utc(r["finished"]) - _utc(r["started"]) for r in records.values())


def _summary(models: Sequence[str], data: Dict, started: float):
    def summarize(ctx: Context) -> None:
        with proc.logged(ctx.log, "results"):
            models_results = collect(ctx.work, models)
            seconds = steps_seconds(ctx.records)
            with open(os.path.join(ctx.work, "state", f"{models[-1]}.json"), encoding="utf-8") as f:
                measured_on = json.load(f).get("machine") or machine()  # after the last training, not at a rerun
            results = {"task": {"name": "reverse", **data}, "models": models_results,
                       "seconds": round(seconds), "machine": measured_on,
                       "steps": {n: {k: r.get(k) for k in ("started", "finished")} for n, r in ctx.records.items()}}
            lines = side_by_side(models_results)
            write_atomic(os.path.join(ctx.work, "table.md"), "\n".join(lines) + "\n")
            write_atomic(ctx.out, json.dumps(results, indent=2) + "\n")
            print("\n".join(lines))
        sentences = next(iter(models_results.values()))["sentences"]
        earlier = made_earlier(ctx.records, started)
        print(f"\nReversal task, {sentences} test sentences, beam {EVALUATE['beam']}, CPU", flush=True)
        print("\n".join(lines))
        if len(earlier) == len(ctx.records):
            last = max(ctx.records[n]["finished"] for n in earlier)
            print(f"\nNothing was trained or scored now: every result above was made by an earlier run with the same "
                  f"settings (finished {last.replace('T', ' ').replace('Z', ' UTC')}) and reused; that run took "
                  f"{seconds:.0f}s. To train again, remove {ctx.work} or give another --workdir.", flush=True)
        else:
            if earlier:
                print(f"\nReused from an earlier run with the same settings: {', '.join(earlier)}.", flush=True)
            print(f"\nThis run took {time.time() - started:.0f}s.", flush=True)
        print(f"results: {ctx.out}, {os.path.join(ctx.work, 'table.md')}; logs: {os.path.join(ctx.work, 'logs')}; "
              f"checkpoints: {os.path.join(ctx.work, 'runs')}", flush=True)

    return summarize


def machine() -> Dict:
    """What the timings were measured on, and how busy it was (the load average just after a model's training)."""
    import torch

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "omp_num_threads": proc.cpu_threads(), "load_average_1min": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="demo_out", help="where data, checkpoints, logs and results go")
    parser.add_argument("--epochs", type=positive_int, default=40, help="training epochs per model")
    parser.add_argument("--train-size", type=positive_int, default=4000, help="training sentence pairs")
    parser.add_argument("--models", default="vanilla,window", help=f"some of {', '.join(MODELS)}")
    parser.add_argument("--force", action="store_true", help="make again the steps recorded with other settings "
                        "(without it such a rerun is refused); only what the tool made is removed")
    a = parser.parse_args(argv)
    a.models = list(dict.fromkeys(m for m in a.models.split(",") if m))
    unknown = [m for m in a.models if m not in MODELS]
    if unknown or not a.models:
        parser.error(f"--models: unknown {', '.join(unknown) or 'none given'}; choose from {', '.join(MODELS)}")
    return run_main(PROG, lambda: demo(a), interrupted="interrupted: rerun the same command to resume")


def demo(a) -> int:
    # fairseq's runs get one thread unless OMP_NUM_THREADS says otherwise (util/proc.py: cpu_threads)
    work = work_dir(a.workdir, "--workdir")
    Runner("demo", work, force=a.force, flag="--workdir").run(
        steps(a, work), title=f"demo: {', '.join(MODELS[m][0] for m in a.models)} on the reversal task, fairseq "
                              f"with OMP_NUM_THREADS={proc.cpu_threads()}")
    return 0
