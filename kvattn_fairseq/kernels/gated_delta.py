"""The gated delta rule (ops/gated_delta.py) through flash-linear-attention's kernels: `chunked` for whole sequences
(training and prefill: fla's chunk_gated_delta_rule, the WY form with the decay, forward and backward) and `step`
for one decoding token (fla's fused_recurrent_gated_delta_rule: forward only, so the ops call it only where
no gradient is asked for).

Heads are folded into the batch, so every call has one head: [N, T, 1, d].  q, k, v go in the model's half
precision (fla's kernels take fp16/bf16; bounded inputs: q and k of length <= 1, SiLU'd v), the log-decay g in fp32 (its
cumulative sums are what the kernel exponentiates), the state in fp32.  The caller folds padding into k, beta and g
(k = 0, beta = 0, g = 0 there), L2-normalises q and k and scales q itself (scale=1.0 here).  Keys narrower than 16
are zero-padded like kernels/chunked.py does (the tensor cores' smallest tile): a zero key feature adds nothing to
k.k or to the state, whose padded rows stay zero.
"""
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

MIN_KEY = 16


def _chunk():
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    return chunk_gated_delta_rule


def _recurrent():
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    return fused_recurrent_gated_delta_rule


def _width(dk: int) -> int:
    return max(MIN_KEY, -(-dk // MIN_KEY) * MIN_KEY)


def _state(state: Optional[Tensor], width: int) -> Optional[Tensor]:
    """[N, dk, dv] -> fla's [N, 1, width, dv], fp32"""
    return None if state is None else F.pad(state.float(), (0, 0, 0, width - state.size(1))).unsqueeze(1)


def chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor,
            state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """ops/gated_delta.causal_parallel's contract: q, k [N, T, dk], v [N, T, dv] (fp16/bf16), beta, g [N, T],
    state [N, dk, dv] -> (out [N, T, dv] fp32, final state [N, dk, dv] fp32)."""
    dtype, dk, width = v.dtype, k.size(-1), _width(k.size(-1))
    q4, k4 = (F.pad(x.to(dtype), (0, width - dk)).unsqueeze(2) for x in (q, k))
    out, final = _chunk()(q4, k4, v.unsqueeze(2), g=g.float().unsqueeze(2), beta=beta.to(dtype).unsqueeze(2),
                          scale=1.0, initial_state=_state(state, width), output_final_state=True)
    return out.squeeze(2).float(), final.squeeze(1)[:, :dk].float()


def step(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor,
         state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """ops/gated_delta.causal_step's contract, the reorder already applied: q, k [N, dk], v [N, dv] (fp16/bf16),
    beta, g [N], state [N, dk, dv] -> (out [N, dv] fp32, new state [N, dk, dv] fp32)."""
    dtype, dk, width = v.dtype, k.size(-1), _width(k.size(-1))
    q4, k4 = (F.pad(x.to(dtype), (0, width - dk)).view(x.size(0), 1, 1, width) for x in (q, k))
    out, final = _recurrent()(q4, k4, v.view(v.size(0), 1, 1, -1), g=g.float().view(-1, 1, 1),
                              beta=beta.to(dtype).view(-1, 1, 1), scale=1.0, initial_state=_state(state, width),
                              output_final_state=True)  # by name: its fifth parameter is gk, not beta
    return out.view(out.size(0), -1).float(), final.squeeze(1)[:, :dk].float()
