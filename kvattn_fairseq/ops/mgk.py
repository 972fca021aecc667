"""Transformer with a mixture of Gaussian keys (Nguyen et al., ICML 2022), torch only.

Each key position j carries M Gaussian components with means k_jr, variances sigma_r^2 = sqrt(d) / s_r (s_r: the
inverse-variance scales; the paper's equal variances are s = 1, the official LM code's are 1, 3) and weights pi_jr:

    l_ijr = log pi_jr - s_r ||q_i - k_jr||^2 / (2 sqrt(d))
    soft E-step: L_ij = logsumexp_r l_ijr        hard E-step: L_ij = max_r (-s_r ||q_i - k_jr||^2 / (2 sqrt(d)))
    A = softmax_j(L_ij + mask),  out_i = sum_j A_ij v_j

computed in log space (the official code's exp -> divide-by-(sum + 1e-6) path zeroes whole rows once the kernels
underflow).  Squared distances come from ||q||^2 + ||k||^2 - 2 q.k (a matmul), clamped at 0.

The paper's design B updates pi by EM instead of by gradient: pi_jr = the mean over queries i of the responsibility
gamma_ijr = softmax_r(l_ijr); responsibility_sums gives the sums, the module divides by the counts.

MLK, the linear version: phi(q)^T sum_j (sum_r pi_r phi(k_jr)) v_j^T / phi(q)^T sum_j sum_r pi_r phi(k_jr), with
phi = elu + 1: the components are mixed before accumulating, so the state is that of linear attention, whatever M.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import softmax_kv


def log_kernel(q: Tensor, keys: Tensor, inv_var: Sequence[float], log_pi: Optional[Tensor] = None,
               hard: bool = False) -> Tensor:
    """q [B, H, Tq, d]; keys [B, H, Tk, M, d]; log_pi broadcastable to [B, H, Tk, M] -> L [B, H, Tq, Tk] (fp32)."""
    q = q.float()
    keys = keys.float()
    tau = q.size(-1) ** -0.5
    q2 = q.pow(2).sum(-1).unsqueeze(-1)  # [B, H, Tq, 1]
    parts = []
    for r, s in enumerate(inv_var):
        k = keys[..., r, :]
        d2 = (q2 + k.pow(2).sum(-1).unsqueeze(-2) - 2.0 * torch.matmul(q, k.transpose(-1, -2))).clamp(min=0.0)
        part = -0.5 * tau * s * d2
        if log_pi is not None and not hard:
            part = part + log_pi[..., r].unsqueeze(-2)
        parts.append(part)
    stacked = torch.stack(parts, dim=-1)
    return stacked.max(dim=-1).values if hard else torch.logsumexp(stacked, dim=-1)


def attention(q: Tensor, keys: Tensor, v: Tensor, inv_var: Sequence[float], *, log_pi: Optional[Tensor] = None,
              hard: bool = False, pad: Optional[Tensor] = None, causal: bool = False, dropout_p: float = 0.0,
              training: bool = False) -> Tensor:
    """Causal queries are the last Tq of the Tk positions (decoding continues a cache).

    The soft E-step is softmax attention over M * Tk keys, one per (position, component) sharing the position's
    value, with augmented vectors whose dot product is exactly l_ijr / tau:
        q~_i = [q_i, 1, |q_i|^2],   k~_jr = [s_r k_jr, -s_r |k_jr|^2 / 2 + log pi_jr / tau, -s_r / 2],
    so it runs in torch's fused attention kernel (no Tq x Tk x M tensors kept for backward).  The hard E-step (a
    max over components) has no such form and uses the explicit scores.
    """
    if hard or q.size(-2) <= softmax_kv.FEW_QUERIES:  # (decoding: the augmented keys would be rebuilt every step)
        scores = log_kernel(q, keys, inv_var, log_pi, hard)
        return softmax_kv.attend_scores(scores, v, pad=pad, causal=causal, dropout_p=dropout_p, training=training)
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, keys = q.to(dtype), keys.to(dtype)
    tau = q.size(-1) ** -0.5
    bsz, heads, tk, m, _ = keys.shape
    s = torch.tensor(inv_var, dtype=dtype, device=q.device).view(1, 1, 1, m, 1)
    offset = -0.5 * s * keys.pow(2).sum(-1, keepdim=True)
    if log_pi is not None:
        offset = offset + log_pi.to(dtype).expand(bsz, heads, tk, m).unsqueeze(-1) / tau
    k_aug = torch.cat([s * keys, offset, (-0.5 * s).expand(bsz, heads, tk, m, 1)], dim=-1)
    k_aug = k_aug.transpose(2, 3).reshape(bsz, heads, m * tk, -1)  # component-major blocks of Tk keys
    q_aug = torch.cat([q, torch.ones_like(q[..., :1]), q.pow(2).sum(-1, keepdim=True)], dim=-1)
    out = softmax_kv.attention(q_aug, k_aug, v.to(dtype).repeat(1, 1, m, 1), pad=pad, causal=causal, scale=tau,
                               dropout_p=dropout_p, training=training, key_blocks=m)
    return out.to(v.dtype)


def reference(q: Tensor, keys: Tensor, v: Tensor, inv_var: Sequence[float], *, pi: Optional[Tensor] = None,
              hard: bool = False, pad: Optional[Tensor] = None, causal: bool = False) -> Tensor:
    """The paper's eq. (9), literally (mixture of Gaussian densities, normalised over keys), in fp64.
    pi [B, H, Tk, M] (or None: equal weights)."""
    bsz, heads, tq, d = q.shape
    tk, m = keys.size(2), keys.size(3)
    out = torch.zeros(bsz, heads, tq, v.size(-1), dtype=torch.float64)
    for b in range(bsz):
        for h in range(heads):
            for i in range(tq):
                pos = tk - tq + i
                js = [j for j in range(tk) if (not causal or j <= pos) and (pad is None or not pad[b, j])]
                if not js:
                    continue
                w = []
                for j in js:
                    comps = [-(inv_var[r] * (q[b, h, i].double() - keys[b, h, j, r].double()).pow(2).sum())
                             / (2 * d ** 0.5) for r in range(m)]
                    if hard:
                        w.append(torch.stack(comps).max())
                    else:
                        weights = [1.0 / m if pi is None else pi[b, h, j, r].double() for r in range(m)]
                        w.append(torch.log(sum(wr * torch.exp(c) for wr, c in zip(weights, comps))))
                w = torch.stack(w)
                a = torch.exp(w - w.max())
                a = a / a.sum()
                out[b, h, i] = sum(a[n] * v[b, h, j].double() for n, j in enumerate(js))
    return out


def responsibility_sums(q: Tensor, keys: Tensor, inv_var: Sequence[float], log_pi: Optional[Tensor],
                        query_real: Tensor, chunk: int = 64) -> Tensor:
    """The E-step statistics of the EM update of pi (the paper's design B): for every key j and component r, the
    responsibilities gamma_ijr = softmax_r(l_ijr) summed over the real queries i.

    q [B, H, Tq, d]; keys [B, H, Tk, M, d]; log_pi broadcastable to [B, H, Tk, M] (None: equal weights);
    query_real [B, Tq] (False at padding) -> [B, H, Tk, M], fp32, without gradient.  Every query counts for every
    key, causal or not (the official code averages over all query positions); padded keys are the caller's to
    drop.  Queries are taken `chunk` at a time, so no [B, H, Tq, Tk, M] tensor is formed.
    """
    with torch.no_grad():
        q, keys = q.float(), keys.float()
        tau = q.size(-1) ** -0.5
        k2 = keys.pow(2).sum(-1)  # [B, H, Tk, M]
        total = q.new_zeros(keys.shape[:-1])
        for start in range(0, q.size(-2), chunk):
            qc = q[..., start:start + chunk, :]
            q2 = qc.pow(2).sum(-1).unsqueeze(-1)
            parts = []
            for r, s in enumerate(inv_var):
                d2 = (q2 + k2[..., r].unsqueeze(-2) - 2.0 * torch.matmul(qc, keys[..., r, :].transpose(-1, -2)))
                part = -0.5 * tau * s * d2.clamp(min=0.0)
                if log_pi is not None:
                    part = part + log_pi[..., r].float().unsqueeze(-2)
                parts.append(part)
            gamma = torch.softmax(torch.stack(parts, dim=-1), dim=-1)  # [B, H, c, Tk, M]
            real = query_real[:, start:start + chunk].to(gamma.dtype)
            total += torch.einsum("bhqkm,bq->bhkm", gamma, real)
        return total


def mixed_key_features(keys: Tensor, pi: Tensor) -> Tensor:
    """MLK: sum_r pi_r phi(k_r): keys [..., M, d], pi broadcastable to [..., M] -> [..., d] (fp32)."""
    feats = F.elu(keys.float()) + 1.0
    return (feats * pi.float().unsqueeze(-1)).sum(dim=-2)
