"""Torch-only attention math, one file per family: a naive reference, the parallel (training) path and the step path.

One contract per family of ops; the modules and the tests call every family the same way.

Causal recurrent families (linear.py, delta.py, gated_delta.py, memsizer.py, factorized.py; linear.ON_FEATURES for
MLK; the prefix product they share is linear_scan.py):

    causal_reference(q, k, v, *family_inputs, state=None, pad=None) -> (out, final_state)   fp64, loops, for tests
    causal_parallel(q, k, v, *family_inputs, state=None, pad=None, chunk=DEFAULT_CHUNK) -> (out, final_state)
    causal_step(q, k, v, *family_inputs, state=None, pad=None, order=None) -> (out, new_state)

- One layout, heads folded into the batch: q, k [N, T, dk], v [N, T, dv], per-token scalars (delta's beta, gated
  delta's beta and g) [N, T], pad [N, T] (True at padding: a padded position leaves the state as it was); the step
  drops T.  MemSizer's (p, a, u) take the places of (q, k, v), with N the batch (its heads are averaged before its
  one read).
- The state: [N, dk, dv] fp32 (fp64 stays fp64), or what the family documents: linear's (S | z) [N, dk, dv + 1],
  MemSizer's (S, count), factorized's (N, Z, m).  `state=None` starts from nothing; the parallel path's final state
  equals the one the step reaches, so a prompt may be prefilled and then stepped.
- `order` [N] (the step only): row n continues state row order[n], a search's reorder not yet applied (the fused
  steps gather by it; the PyTorch step applies it first).
- `state`, `pad`, `order` and `chunk` are keyword-only everywhere.

Their non-causal forms (linear, memsizer, factorized):

    memory(k, v, *, pad=None) -> memory      read(q, memory, out_dtype) -> out      (fp32 memory, [N, dk, dv(+1)])
    reference(q, k, v, *, pad=None, causal=False) -> out                            fp64, for tests

Softmax families (softmax_kv.py, mgk.py, window.py) keep the heads: q [B, H, Tq, d], k, v [B, H, Tk, d], pad [B, Tk]
at the keys, causal queries being the last Tq of the Tk positions; `attention(q, k, v, ..., *, pad=None,
causal=False, ...)` and `reference(...)` with the same arguments.  (window.py still calls its key padding
`key_pad`, positionally.)

Which implementation serves a call (the PyTorch op here, a Triton step or an fla chunked kernel) is decided in one
place, kvattn_fairseq/kernels/__init__.py (`fused_step`, `fused_chunk`); fp64 always stays here.
"""
