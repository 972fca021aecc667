"""The decoding state a trained model carries: what the quality, recall and demo tables put against their scores."""
from typing import Dict, Optional, Sequence


def state_bytes(checkpoint: str, tokens: int) -> int:
    """Bytes of decoding state one hypothesis carries after `tokens` steps of fairseq's incremental decoder (which
    feeds the layers one token per call), every tensor in the state counted."""
    return state_bytes_after(checkpoint, [tokens])[tokens]


def state_bytes_after(checkpoint: str, steps: Sequence[int], source_tokens: Optional[int] = None,
                      data: Optional[str] = None) -> Dict[int, int]:
    """{t: state_bytes after t output tokens} for each t of `steps`, in one decoding.  An encoder-decoder model
    first encodes a source of `source_tokens` tokens (its end of sentence included): its cross-attention's cache of
    the source is part of the state.  `data` replaces the data directory the checkpoint was trained on (a
    translation task opens its dictionaries there)."""
    import logging

    from fairseq import checkpoint_utils

    longest = max(steps)
    overrides = {"max_target_positions": longest + 8, "tokens_per_sample": longest + 8}
    if data is not None:
        overrides["data"] = data
    quiet = logging.getLogger("fairseq")  # the task's dictionary lines, in the middle of an experiment's output
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        models, _ = checkpoint_utils.load_model_ensemble([checkpoint], arg_overrides=overrides)
    finally:
        quiet.setLevel(level)
    return model_state_bytes(models[0].eval(), steps, source_tokens)


def model_state_bytes(model, steps: Sequence[int], source_tokens: Optional[int] = None) -> Dict[int, int]:
    """state_bytes_after on a model already built.  The sizes do not depend on the token values, only on their
    numbers: random tokens stand in for a source and for the hypothesis."""
    import torch

    from ..bench.common import state_bytes as count

    vocab = len(model.decoder.dictionary)
    x = torch.randint(4, vocab, (1, max(steps)))
    kwargs = {}
    sizes = {}
    threads = torch.get_num_threads()
    # one token per call: ops this small only wait on other threads (a tiny model's 512 steps: 0.3 s on one
    # thread, 5 to 11 s on two, on a busy 2-core CPU)
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            if source_tokens is not None:
                src = torch.randint(4, len(model.encoder.dictionary), (1, source_tokens))
                kwargs["encoder_out"] = model.encoder(src, src_lengths=torch.tensor([source_tokens]))
            state: Dict = {}
            for t in range(1, max(steps) + 1):
                model.decoder(x[:, :t], incremental_state=state, **kwargs)
                if t in steps:
                    sizes[t] = count(state)
    finally:
        torch.set_num_threads(threads)
    return sizes
