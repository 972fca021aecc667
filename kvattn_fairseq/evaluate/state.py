"""The decoding state a trained model carries: what the quality and recall tables put against their scores."""
from typing import Dict


def state_bytes(checkpoint: str, tokens: int) -> int:
    """Bytes of decoding state one hypothesis carries after `tokens` steps of fairseq's incremental decoder (which
    feeds the layers one token per call), every tensor in the state counted."""
    import torch
    from fairseq import checkpoint_utils

    from ..bench.common import state_bytes as count

    models, _ = checkpoint_utils.load_model_ensemble([checkpoint], arg_overrides={"max_target_positions": tokens + 8,
                                                                                  "tokens_per_sample": tokens + 8})
    model = models[0].eval()
    x = torch.randint(4, len(model.decoder.dictionary), (1, tokens))
    state: Dict = {}
    threads = torch.get_num_threads()
    # one token per call: ops this small only wait on other threads (a tiny model's 512 steps: 0.3 s on one
    # thread, 5 to 11 s on two, on a busy 2-core CPU)
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for t in range(1, tokens + 1):
                model.decoder(x[:, :t], incremental_state=state)
    finally:
        torch.set_num_threads(threads)
    return count(state)
