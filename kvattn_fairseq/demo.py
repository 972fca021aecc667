"""`make demo`: fairseq's vanilla transformer against the plugin's constant-state decoder, on generated data, on CPU.

Generates a sequence-reversal translation task, binarizes it with fairseq-preprocess, trains fairseq's own
`transformer` and the plugin's `kvattn_transformer` of the same sizes and settings with a sliding window of W = 4
positions in decoder self-attention (softmax cross-attention, whose cache is the source's keys and values) through
fairseq-train, decodes both with fairseq-generate --beam 4, and prints sacreBLEU, decoding speed and the decoding
state one hypothesis carries side by side.  `--models vanilla,window,memsizer` adds MemSizer in decoder self- and
cross-attention (the MemSizer paper's MT layout).  Everything goes through the real fairseq command-line tools; the
state is measured on the trained models with fairseq's incremental decoder.
"""
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from sacrebleu.metrics import BLEU

from . import USER_DIR, toydata
from .evaluate.fairseq_tools import in_order, parse_generate
from .util import proc
from .util.cli import ArgumentParser, positive_int, run_main
from .util.io import write_atomic

BIN = Path(sys.executable).parent
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
STATE_AFTER = (16, 1000)  # output tokens: the task's longest target (15 + end of sentence), and a long generation
# Models this small gain nothing from intra-op threads, and on a shared CPU OpenMP's spinning threads slow fairseq-train
# down many times over (measured: 0.19 vs 3.45 updates/s on a busy 2-core machine); no loader worker processes
# either.  An OMP_NUM_THREADS the user set is kept.
ENV = proc.tool_env({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
VALID = re.compile(r"\| valid \| epoch (\d+) .*?\| loss ([\d.]+)")


def run(cmd, log_path: Path, show=None) -> str:
    """Run a fairseq tool, keep its full log, and echo the lines that show progress."""
    def echo(line: str) -> None:
        valid = VALID.search(line)
        if valid:
            print(f"    epoch {valid.group(1)}: valid loss {valid.group(2)}", flush=True)
        elif show is not None and show.search(line):
            print("    " + line.rstrip().split(":", 2)[-1], flush=True)

    return proc.run(cmd, str(log_path), echo=echo, env=ENV)


def decoding_state(model, src_tokens, eos: int, steps=STATE_AFTER) -> dict:
    """{t: bytes of decoding state one hypothesis holds after t output tokens}: the model's incremental decoder fed
    its own greedy output for one source (every tensor in fairseq's incremental state counted: the decoder's
    self-attention state and the cross-attention's cache of the source)."""
    import torch

    from .bench.common import state_bytes

    out, state, sizes = [eos], {}, {}
    with torch.no_grad():
        enc = model.encoder(src_tokens, src_lengths=torch.tensor([src_tokens.size(1)]))
        for t in range(1, max(steps) + 1):
            logits, _ = model.decoder(torch.tensor([out]), encoder_out=enc, incremental_state=state)
            out.append(int(logits[0, -1].argmax()))
            if t in steps:
                sizes[t] = state_bytes(state)
    return sizes


def trained_state(checkpoint: Path, data: Path, source: str) -> dict:
    """decoding_state of a trained checkpoint for one source line."""
    import logging

    from fairseq import checkpoint_utils

    logging.getLogger("fairseq").setLevel(logging.WARNING)  # its task's dictionary lines, in the middle of the demo
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data)})
    src = task.source_dictionary.encode_line(source, add_if_not_exist=False).long().unsqueeze(0)
    return decoding_state(models[0].eval(), src, task.target_dictionary.eos())


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m kvattn_fairseq.demo", description=__doc__)
    parser.add_argument("--workdir", default="demo_out", help="where data, checkpoints and logs go")
    parser.add_argument("--epochs", type=positive_int, default=40, help="training epochs per model")
    parser.add_argument("--train-size", type=positive_int, default=4000, help="training sentence pairs")
    parser.add_argument("--models", default="vanilla,window", help=f"some of {', '.join(MODELS)}")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {', '.join(unknown) or 'none given'}; choose from {', '.join(MODELS)}")
    return run_main(parser.prog, lambda: demo(args))


def demo(args) -> int:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    print(f"[1/4] generating a reversal task ({args.train_size} training pairs) in {work}/raw", flush=True)
    raw = Path(toydata.write_reverse(str(work / "raw"), train=args.train_size, valid=300, test=500,
                                     min_len=3, max_len=15))
    print("[2/4] fairseq-preprocess", flush=True)
    data = work / "bin"
    shutil.rmtree(data, ignore_errors=True)  # the raw data was just regenerated; fairseq-preprocess refuses old dicts
    run([BIN / "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", raw / "train",
         "--validpref", raw / "valid", "--testpref", raw / "test", "--destdir", data, "--joined-dictionary",
         "--workers", "2"], work / "preprocess.log")
    refs = (raw / "test.tgt").read_text(encoding="utf-8").splitlines()

    source = max((raw / "test.src").read_text(encoding="utf-8").splitlines(), key=lambda line: len(line.split()))
    results = {}
    for key in args.models:
        name, arch = MODELS[key]
        save = work / f"ckpt_{key}"
        print(f"[3/4] fairseq-train {name} ({args.epochs} epochs)", flush=True)
        t0 = time.time()
        run([BIN / "fairseq-train", data, "--user-dir", USER_DIR, *arch, *SIZE, "--share-all-embeddings",
             "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "1e-2", "--lr-scheduler", "inverse_sqrt",
             "--warmup-updates", "100", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
             "--max-tokens", "2000", "--max-epoch", args.epochs, "--cpu", "--seed", "1", "--save-dir", save,
             "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1000", "--num-workers", "0"],
            work / f"train_{save.name}.log")
        train_s = time.time() - t0
        print(f"[4/4] fairseq-generate --beam 4 {name}", flush=True)
        log = run([BIN / "fairseq-generate", data, "--user-dir", USER_DIR, "--path", save / "checkpoint_best.pt",
                   "--beam", "4", "--batch-size", "64", "--cpu", "--num-workers", "0"], work / f"generate_{save.name}.log",
                  show=re.compile("Translated"))
        by_id, speed = parse_generate(log)
        hyps = in_order(by_id, len(refs), str(raw / "test.tgt"))
        metric = BLEU()
        bleu = metric.corpus_score(hyps, [refs])
        state = trained_state(save / "checkpoint_best.pt", data, source)
        results[name] = {"sacrebleu": round(bleu.score, 2), "signature": str(metric.get_signature()),
                         "sentences": len(hyps), "decode_sentences_per_s": speed["sentences_per_s"],
                         "decode_tokens_per_s": speed["tokens_per_s"], "train_seconds": round(train_s, 1),
                         "state_bytes_per_hypothesis": {str(t): b for t, b in state.items()}, "flags": arch}

    write_atomic(str(work / "results.json"), json.dumps(results, indent=2) + "\n")
    print(f"\nReversal task, {len(refs)} test sentences, beam 4, CPU, {time.time() - started:.0f}s in all")
    cols = [f"state @{t} tok" for t in STATE_AFTER]
    print(f"{'model':<22}{'sacreBLEU':>10}{'sent/s':>8}{'tok/s':>8}" + "".join(f"{c:>16}" for c in cols) +
          f"{'train s':>9}")
    for name, r in results.items():
        print(f"{name:<22}{r['sacrebleu']:>10.1f}{r['decode_sentences_per_s']:>8.1f}{r['decode_tokens_per_s']:>8.0f}"
              + "".join(f"{r['state_bytes_per_hypothesis'][str(t)]:>14,} B" for t in STATE_AFTER)
              + f"{r['train_seconds']:>9.0f}")
    print(f"state: bytes of decoding state one hypothesis holds after that many output tokens, for the longest test "
          f"source ({len(source.split())} tokens)")
    print(f"sacreBLEU signature: {next(iter(results.values()))['signature']}")
    print(f"results: {work / 'results.json'}; logs and checkpoints: {work}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
