"""Translation throughput at beam 4 with the generator fairseq-generate uses, WMT-like sentence lengths."""
from typing import Dict

import torch
from fairseq.sequence_generator import SequenceGenerator

from .common import BenchmarkError, now


def random_sources(dictionary, sentences: int, mean_len: int, seed: int = 0):
    """Left-padded sources of mean_len +- 20% tokens (ending in EOS), as fairseq's translation task batches them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(int(mean_len * 0.8), int(mean_len * 1.2) + 1, (sentences,), generator=g)
    src = torch.full((sentences, int(lengths.max())), dictionary.pad(), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        src[i, -n:-1] = torch.randint(dictionary.nspecial, len(dictionary), (n - 1,), generator=g)
        src[i, -1] = dictionary.eos()
    return src, lengths


def throughput(model, dictionary, device, sentences: int, batch: int, beam: int, out_len: int,
               src_len: int, repeats: int = 2) -> Dict:
    """Every hypothesis is exactly out_len tokens (min_len = max_len), so all kinds do the same work."""
    src, lengths = random_sources(dictionary, sentences, src_len)
    search = SequenceGenerator([model], dictionary, beam_size=beam, max_len_a=0, max_len_b=out_len, min_len=out_len)
    with torch.no_grad():  # warm-up: first-call costs are not throughput
        search.generate([model], {"net_input": {"src_tokens": src[:batch].to(device),
                                                "src_lengths": lengths[:batch].to(device)}})
    best = float("inf")
    for _ in range(repeats):
        start = now(device)
        done = 0
        with torch.no_grad():
            for i in range(0, sentences, batch):
                sample = {"net_input": {"src_tokens": src[i:i + batch].to(device),
                                        "src_lengths": lengths[i:i + batch].to(device)}}
                done += len(search.generate([model], sample))
        best = min(best, now(device) - start)
        if done != sentences:
            raise BenchmarkError(f"{done} of {sentences} sentences came back")
    tokens = sentences * (out_len + 1)  # + EOS, as fairseq-generate counts
    return {"sentences_per_s": sentences / best, "tokens_per_s": tokens / best, "seconds": best}
