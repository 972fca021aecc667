"""WMT16 En-De as used for Transformer-big: Europarl v7 + Common Crawl + News Commentary v11 (about 4.5M pairs),
newstest2013 as valid, newstest2014 (the full 3003-sentence set) as test, a joint sentencepiece BPE of 32k and a
joined fairseq dictionary.

    python -m kvattn_fairseq.data.wmt16 --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]

OUTDIR/data-bin (fairseq-preprocess -s en -t de, train/valid/test), OUTDIR/spm.model, OUTDIR/test.en and
OUTDIR/test.de (newstest2014 source and reference, raw, one sentence per line, in the binarized order: the same
text sacreBLEU's `-t wmt14/full -l en-de` uses), OUTDIR/prepare.json.  Generate with `--bpe sentencepiece
--sentencepiece-model OUTDIR/spm.model` (or `--post-process sentencepiece`) to get detokenized hypotheses.

No Moses tokenization: sentencepiece works on the raw text, and the training pairs are filtered as fairseq's
recipe does after BPE (1 to 250 pieces a side, length ratio at most 1.5).
"""
import os
import re
import shutil
from collections import Counter
from typing import Dict, List, Tuple

from ..util.errors import OneLineError
from . import subword
from .build import Build, Sources, fairseq_preprocess, build_key, main, parser, options
from .common import Progress, clean, log
from .download import Remote

PROG = "prepare-wmt16-en-de"
VOCAB = 32000
MAX_LEN, MAX_RATIO = 250, 1.5
SPM_SENTENCES = 4_000_000  # sentences (both languages) sampled for the BPE
TFDS = "TFDS url_checksums/wmt16_translate.txt"
OPTIONS = {"source_lang": "en", "target_lang": "de"}  # its own options and their defaults


def _mirrors(path: str, host: str = "www.statmt.org") -> Tuple[str, ...]:
    return (f"https://{host}/{path}", f"http://{host}/{path}")


# Training corpora: paths inside the archives as the fairseq, TFDS and GNMT scripts read them.
TRAIN = {
    "europarl": Remote("training-parallel-europarl-v7.tgz", _mirrors("wmt13/training-parallel-europarl-v7.tgz"),
                       657632379, ("sha256", "0224c7c710c8a063dfd893b0cc0830202d61f4c75c17eb8e31836103d27d96e7", TFDS),
                       ("training/europarl-v7.de-en.de", "training/europarl-v7.de-en.en")),
    "commoncrawl": Remote("training-parallel-commoncrawl.tgz",
                          _mirrors("wmt13/training-parallel-commoncrawl.tgz"), 918311367,
                          ("sha256", "c7a74e2ea01ac6c920123108627e35278d4ccb5701e15428ffa34de86fa3a9e5", TFDS),
                          ("commoncrawl.de-en.de", "commoncrawl.de-en.en")),
    "news-commentary": Remote("training-parallel-nc-v11.tgz",
                              _mirrors("wmt16/translation-task/training-parallel-nc-v11.tgz", "data.statmt.org"),
                              75178032,
                              ("sha256", "cfe8ab047e05043476e498ee765c98e939c7b7d6d294e856344c84476b619d6a", TFDS),
                              ("training-parallel-nc-v11/news-commentary-v11.de-en.de",
                               "training-parallel-nc-v11/news-commentary-v11.de-en.en")),
}


def eval_remotes(src: str, tgt: str) -> Dict[str, Remote]:
    """newstest2013/2014 from the archives and files sacreBLEU reads for wmt13 and wmt14/full (md5s from its table)."""
    test_src = f"test-full/newstest2014-deen-src.{src}.sgm"
    test_ref = f"test-full/newstest2014-deen-ref.{tgt}.sgm"
    return {
        "valid": Remote("test.tgz", _mirrors("wmt13/test.tgz", "statmt.org"), None,
                        ("md5", "48eca5d02f637af44e85186847141f67", "sacrebleu's dataset table, wmt13"),
                        (f"test/newstest2013-src.{src}.sgm", f"test/newstest2013-src.{tgt}.sgm")),
        "test": Remote("test-full.tgz", _mirrors("wmt14/test-full.tgz", "statmt.org"), None,
                       ("md5", "a8cd784e006feb32ac6f3d9ec7eb389a", "sacrebleu's dataset table, wmt14/full"),
                       (test_src, test_ref)),
    }


def read_sgm(path: str) -> List[str]:
    """Segments of a WMT (fake) SGML file, exactly as sacreBLEU extracts them: the text of each line that starts
    with '<seg ', whitespace runs collapsed, entities left as they are."""
    out = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            if line.startswith("<seg "):
                out.append(re.sub(r"\s+", " ", re.sub(r"<seg.*?>(.*)</seg>.*?", r"\1", line).strip()))
    return out


def _pairs(path_a: str, path_b: str):
    # newline="\n": a stray carriage return inside a line must not split it and shift the parallel corpus
    with open(path_a, encoding="utf-8", errors="replace", newline="\n") as fa, \
            open(path_b, encoding="utf-8", errors="replace", newline="\n") as fb:
        n = 0
        for n, (a, b) in enumerate(zip(fa, fb), 1):  # noqa: B007  (n, the line count, is read after the loop)
            yield a, b
        if next(fa, None) is not None or next(fb, None) is not None:
            raise OneLineError(f"{path_a} and {path_b} differ in length after line {n}: a damaged or mismatched "
                               "download")


def collect_train(corpora: List[Tuple[str, Dict[str, str]]], src: str, tgt: str, work: str) -> dict:
    """Clean the parallel corpora into work/train.clean.{src,tgt}, dropping pairs with an empty side (a build step:
    until it is stamped done, a rerun writes the files again from the start)."""
    stats = {}
    outs = {l: open(os.path.join(work, f"train.clean.{l}"), "w", encoding="utf-8") for l in (src, tgt)}
    with outs[src], outs[tgt]:
        for name, files in corpora:
            by_lang = {m.rsplit(".", 1)[1]: p for m, p in files.items()}
            read = kept = 0
            bar = Progress(f"cleaning {name}", unit="pairs")
            for a, b in _pairs(by_lang[src], by_lang[tgt]):
                read += 1
                a, b = clean(a), clean(b)
                if a and b:
                    kept += 1
                    outs[src].write(a + "\n")
                    outs[tgt].write(b + "\n")
                bar.update()
            bar.close()
            log("%s: %d pairs, %d with an empty side dropped", name, read, read - kept)
            stats[name] = {"pairs": read, "kept": kept}
    return stats


def collect_eval(files: Dict[str, Dict[str, str]], src: str, tgt: str, b: Build) -> dict:
    """newstest2013 -> work/valid.raw.*, newstest2014 -> OUTDIR/test.{en,de} (raw, sacreBLEU's text)."""
    counts = {}
    for split, members in files.items():
        sides = {}
        for lang in (src, tgt):
            member = next(m for m in members if m.endswith(f".{lang}.sgm"))
            sides[lang] = read_sgm(members[member])
            if not sides[lang]:
                raise OneLineError(f"{members[member]} holds no <seg> lines: not a WMT SGML file")
        if len(sides[src]) != len(sides[tgt]):
            raise OneLineError(f"the {split} set's {src} and {tgt} files differ in length "
                               f"({len(sides[src])} vs {len(sides[tgt])})")
        for lang, lines in sides.items():
            path = b.path(f"test.{lang}") if split == "test" else os.path.join(b.work, f"valid.raw.{lang}")
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(l + "\n" for l in lines)
        counts[split] = len(sides[src])
    return counts


def _encode_pairs(chunk):
    kept, counts, dropped = [], Counter(), 0
    for a, b in chunk:
        pa, pb = subword.pieces(a), subword.pieces(b)
        la, lb = len(pa), len(pb)
        if not (1 <= la <= MAX_LEN and 1 <= lb <= MAX_LEN) or la > MAX_RATIO * lb or lb > MAX_RATIO * la:
            dropped += 1
            continue
        counts.update(pa)
        counts.update(pb)
        kept.append((" ".join(pa), " ".join(pb)))
    return kept, counts, dropped


def _encode_lines(chunk):
    return [" ".join(subword.pieces(clean(line))) for line in chunk]


def encode_train(b: Build, src: str, tgt: str, workers: int, total: int) -> dict:
    bpe = os.path.join(b.work, "bpe")
    os.makedirs(bpe, exist_ok=True)
    counts, kept, dropped = Counter(), 0, 0
    bar = Progress("encoding train", total, unit="pairs")
    pairs = _pairs(os.path.join(b.work, f"train.clean.{src}"), os.path.join(b.work, f"train.clean.{tgt}"))
    chunks = subword.chunked(((x.rstrip("\n"), y.rstrip("\n")) for x, y in pairs), 20000)
    with open(os.path.join(bpe, f"train.{src}"), "w", encoding="utf-8") as fa, \
            open(os.path.join(bpe, f"train.{tgt}"), "w", encoding="utf-8") as fb:
        for lines, c, d in subword.parallel(_encode_pairs, chunks, b.path("spm.model"), workers):
            fa.writelines(x + "\n" for x, _ in lines)
            fb.writelines(y + "\n" for _, y in lines)
            counts.update(c)
            kept += len(lines)
            dropped += d
            bar.update(len(lines) + d)
    bar.close()
    if not kept:
        raise OneLineError("no training pair survived the length filter: is the training text empty?")
    size = subword.write_dict(b.path("spm.model"), counts, os.path.join(b.work, "dict.txt"))
    log("train: %d pairs kept, %d dropped by the length filter", kept, dropped)
    return {"pairs": kept, "dropped_by_length_filter": dropped, "dict_entries": size}


def encode_eval(b: Build, src: str, tgt: str, workers: int) -> None:
    for split in ("valid", "test"):
        for lang in (src, tgt):
            raw = b.path(f"test.{lang}") if split == "test" else os.path.join(b.work, f"valid.raw.{lang}")
            with open(raw, encoding="utf-8", newline="\n") as f:
                lines = [l.rstrip("\n") for l in f]
            encoded = [x for chunk in subword.parallel(_encode_lines, subword.chunked(lines, 5000),
                                                       b.path("spm.model"), min(workers, 2)) for x in chunk]
            with open(os.path.join(b.work, "bpe", f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(x + "\n" for x in encoded)


def binarize(b: Build, src: str, tgt: str, workers: int) -> dict:
    dest = b.path("data-bin")
    if os.path.exists(dest):  # a previous attempt stopped half-way
        shutil.rmtree(dest)
    bpe = os.path.join(b.work, "bpe")
    fairseq_preprocess(["--source-lang", src, "--target-lang", tgt, "--trainpref", os.path.join(bpe, "train"),
                        "--validpref", os.path.join(bpe, "valid"), "--testpref", os.path.join(bpe, "test"),
                        "--destdir", dest, "--joined-dictionary", "--srcdict", os.path.join(b.work, "dict.txt"),
                        "--workers", str(workers)])
    with open(os.path.join(dest, f"dict.{src}.txt"), encoding="utf-8") as f:
        return {"dictionary_size": 4 + sum(1 for _ in f)}


def prepare(args) -> None:
    src, tgt = args.source_lang, args.target_lang
    if {src, tgt} != {"en", "de"}:
        raise OneLineError(f"WMT16 En-De has only English and German: got --source-lang {src} --target-lang {tgt} "
                           "(use en/de or de/en)")
    vocab = args.bpe_size or (subword.TINY_VOCAB if args.tiny else VOCAB)
    if Build.done(args.out, args.force, options(args, bpe_size=vocab)):
        return
    evals = eval_remotes(src, tgt)
    sources = Sources(list(TRAIN.values()) + list(evals.values()), args)
    with Build(args.out, build_key(args, bpe_size=vocab)) as b:
        corpora = [(name, sources.members(r.name, b)) for name, r in TRAIN.items()]
        eval_files = {split: sources.members(r.name, b) for split, r in evals.items()}
        train_stats = b.step("collect-train", lambda: collect_train(corpora, src, tgt, b.work))
        eval_counts = b.step("collect-eval", lambda: collect_eval(eval_files, src, tgt, b))

        def sentences():
            for l in (src, tgt):
                with open(os.path.join(b.work, f"train.clean.{l}"), encoding="utf-8", newline="\n") as f:
                    yield from (line.rstrip("\n") for line in f)

        spm_info = b.step("sentencepiece", lambda: subword.train(sentences(), b.path("spm"), vocab, args.workers,
                                                                 args.tiny, SPM_SENTENCES))
        total = sum(s["kept"] for s in train_stats.values())
        encoded = b.step("encode-train", lambda: encode_train(b, src, tgt, args.workers, total))
        b.step("encode-eval", lambda: encode_eval(b, src, tgt, args.workers))
        binarized = b.step("binarize", lambda: binarize(b, src, tgt, args.workers))
        b.finish({
            "dataset": "wmt16_en_de", "prepared_by": "kvattn_fairseq.data.wmt16",
            "options": options(args, bpe_size=vocab),
            "direction": f"{src}-{tgt}", "sources": sources.record,
            "splits": {"train": dict(encoded, corpora=train_stats,
                                     filter=f"1-{MAX_LEN} pieces a side, length ratio <= {MAX_RATIO}"),
                       "valid": {"set": "newstest2013", "pairs": eval_counts["valid"]},
                       "test": {"set": "newstest2014 (wmt14/full)", "pairs": eval_counts["test"],
                                "raw": [f"test.{src}", f"test.{tgt}"]}},
            "subword": spm_info,
            "data_bin": {"dir": "data-bin", "source_lang": src, "target_lang": tgt, "joined_dictionary": True,
                         **binarized},
            "decode": "fairseq-generate --bpe sentencepiece --sentencepiece-model OUTDIR/spm.model "
                      "(or --post-process sentencepiece)",
        })


def command_parser():
    p = parser(PROG, __doc__.split("\n\n")[0], VOCAB)
    p.add_argument("-s", "--source-lang", default=OPTIONS["source_lang"], help="en (default) or de")
    p.add_argument("-t", "--target-lang", default=OPTIONS["target_lang"], help="de (default) or en")
    return p


def cli(argv=None) -> int:
    return main(PROG, command_parser(), prepare, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
