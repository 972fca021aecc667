"""Sentencepiece BPE trained on the training text, applied in parallel, and the fairseq dictionary it implies.

The model is trained with the identity normalization, so that fairseq's own sentencepiece decoding
(`--bpe sentencepiece` / `--post-process sentencepiece`: drop spaces, turn U+2581 into spaces) gives back the
cleaned input exactly; NFKC would silently rewrite characters such as the ellipsis in hypotheses scored against raw
references.  The dictionary lists every piece of the model, so no piece seen at test time is unknown to fairseq.
"""
import itertools
import multiprocessing
from collections import Counter
from typing import Callable, Iterable, Iterator, List, Sequence

from ..util.errors import OneLineError
from .common import log

TINY_VOCAB = 320
FAIRSEQ_SPECIALS = {"<s>", "<pad>", "</s>", "<unk>"}


def train(sentences: Iterable[str], model_prefix: str, vocab_size: int, workers: int, tiny: bool,
          max_sentences: int) -> dict:
    """Train a BPE model on (a deterministic sample of) `sentences`; writes model_prefix.model/.vocab."""
    import sentencepiece as spm

    count = 0

    def sample() -> Iterator[str]:
        nonlocal count
        for line in sentences:
            if line:
                count += 1
                yield line

    options = dict(model_prefix=model_prefix, vocab_size=vocab_size, model_type="bpe",
                   normalization_rule_name="identity", character_coverage=1.0 if tiny else 0.9999,
                   num_threads=max(1, workers), max_sentence_length=16384, input_sentence_size=max_sentences,
                   shuffle_input_sentence=True, hard_vocab_limit=not tiny, minloglevel=2 if tiny else 0)
    log("training sentencepiece BPE (vocabulary %d) on at most %d sentences", vocab_size, max_sentences)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sample(), **options)
    except RuntimeError as e:  # e.g. a vocabulary larger than the text allows: name the flag that fixes it
        raise OneLineError(f"sentencepiece training failed ({str(e).strip().splitlines()[-1]}); "
                           "a smaller --bpe-size may fix it") from None
    sp = spm.SentencePieceProcessor(model_file=model_prefix + ".model")
    return {"model": "spm.model", "type": "bpe", "vocab_size": sp.get_piece_size(), "requested": vocab_size,
            "normalization": "identity", "character_coverage": options["character_coverage"],
            "trained_on_sentences": min(count, max_sentences)}


_SP = None


def _load(model: str) -> None:
    global _SP
    import sentencepiece as spm

    _SP = spm.SentencePieceProcessor(model_file=model)


def pieces(text: str) -> List[str]:
    """Pieces of one cleaned line, in the worker that loaded the model."""
    return _SP.encode(text, out_type=str)


def parallel(fn: Callable, chunks: Iterable[Sequence], model: str, workers: int) -> Iterator:
    """fn(chunk) for each chunk, in order, in `workers` processes that each load the sentencepiece model."""
    if workers <= 1:
        _load(model)
        yield from map(fn, chunks)
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_load, initargs=(model,)) as pool:
        yield from pool.imap(fn, chunks, chunksize=1)


def chunked(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while True:
        block = list(itertools.islice(it, size))
        if not block:
            return
        yield block


def write_dict(model: str, counts: Counter, path: str) -> int:
    """fairseq dict.txt ("piece count" lines, most frequent first) holding every piece of the model except
    sentencepiece's own <unk>/<s>/</s>, which fairseq adds itself; returns the number of entries."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    vocab = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
             if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
             and sp.id_to_piece(i) not in FAIRSEQ_SPECIALS]
    extra = set(counts) - set(vocab)  # characters outside the model's coverage: left to fairseq's <unk>
    vocab.sort(key=lambda p: (-counts.get(p, 0), p))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{p} {counts.get(p, 0)}\n" for p in vocab)
    if extra:
        log("%d rare characters are outside the sentencepiece model and will read as <unk>", len(extra))
    return len(vocab)
