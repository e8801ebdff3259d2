"""A faster GRU training pass for the CPU, over ``nn.GRU``'s own parameters.

PyTorch's CPU ``nn.GRU`` has no oneDNN kernel (its LSTM has one) and runs as a chain of
small ATen ops differentiated by autograd step by step. A profile of GRU 3x200 at batch 64
puts most of the time in per-step matrix products and ~20 small element-wise ops per step
(plus ``cat``/``copy``). This layer keeps the same maths and parameters but:

* forward: one GEMM for the input projection of all steps, then per step one ``addmm``
  and four fused element-wise ops written into preallocated buffers;
* the derivative factors of every gate are computed once for all steps, vectorised;
* backward: per step one ``addmm`` and five multiplies; the weight gradients of all steps
  are then two large GEMMs instead of one small GEMM per step.

It is used only to train on the CPU (``model.net.cpu_kernel=fused``, the default for
``cell=gru``); evaluation and CUDA (cuDNN) keep ``nn.GRU``. Checkpoints are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GRULayer(torch.autograd.Function):
    """One unidirectional GRU layer over ``(B, T, I)`` from a zero state; gates (r, z, n)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
        B, T, _ = x.shape
        H = w_hh.shape[1]
        # Time-major buffers, so each step reads and writes contiguous blocks.
        gi = torch.addmm(b_ih, x.reshape(B * T, -1), w_ih.t()).view(B, T, 3 * H)
        gi = gi.transpose(0, 1).contiguous()
        hs = x.new_empty(T + 1, B, H)  # h_0 (zeros) .. h_T
        hs[0].zero_()
        rz = x.new_empty(T, B, 2 * H)
        ns = x.new_empty(T, B, H)
        gh = x.new_empty(T, B, 3 * H)
        w_hh_t = w_hh.t()
        for t in range(T):
            torch.addmm(b_hh, hs[t], w_hh_t, out=gh[t])
            torch.add(gi[t, :, : 2 * H], gh[t, :, : 2 * H], out=rz[t]).sigmoid_()
            torch.addcmul(gi[t, :, 2 * H :], rz[t, :, :H], gh[t, :, 2 * H :], out=ns[t]).tanh_()
            torch.lerp(ns[t], hs[t], rz[t, :, H:], out=hs[t + 1])  # n + z * (h - n)
        r, z = rz[..., :H], rz[..., H:]
        # With h' = n + z (h - n), n = tanh(a_n), a_n = gi_n + r * gh_n, r = s(a_r), z = s(a_z):
        a = (1 - z) * (1 - ns * ns)  # dL/da_n = dh' * a
        c = (hs[:-1] - ns) * z * (1 - z)  # dL/da_z = dh' * c
        e = gh[..., 2 * H :] * r * (1 - r)  # dL/da_r = dL/da_n * e
        ctx.save_for_backward(x, w_ih, w_hh, hs, r.contiguous(), z.contiguous(), a, c, e)
        return hs[1:].transpose(0, 1)

    @staticmethod
    def backward(ctx: Any, dout: Tensor):
        x, w_ih, w_hh, hs, r, z, a, c, e = ctx.saved_tensors
        T, B, H = a.shape
        dout = dout.transpose(0, 1)
        dgh = x.new_empty(T, B, 3 * H)  # d(recurrent pre-activations): [a_r, a_z, r * a_n]
        dan = x.new_empty(T, B, H)  # d(a_n), the input side's third block
        dh = x.new_zeros(B, H)
        for t in range(T - 1, -1, -1):
            dh += dout[t]
            torch.mul(dh, a[t], out=dan[t])
            torch.mul(dh, c[t], out=dgh[t, :, H : 2 * H])
            torch.mul(dan[t], e[t], out=dgh[t, :, :H])
            torch.mul(dan[t], r[t], out=dgh[t, :, 2 * H :])
            dh = torch.addmm(dh.mul_(z[t]), dgh[t], w_hh)
        dgh_flat = dgh.view(T * B, 3 * H)
        dgi = torch.cat([dgh[..., : 2 * H], dan], dim=2).view(T * B, 3 * H)
        dw_hh = dgh_flat.t() @ hs[:-1].reshape(T * B, H)
        dw_ih = dgi.t() @ x.transpose(0, 1).reshape(T * B, -1)
        dx = (dgi @ w_ih).view(T, B, -1).transpose(0, 1)
        return dx, dw_ih, dw_hh, dgi.sum(0), dgh_flat.sum(0)


def _layer(gru: nn.GRU, x: Tensor, k: int, reverse: bool) -> Tensor:
    sfx = f"_l{k}" + ("_reverse" if reverse else "")
    params = [getattr(gru, f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if reverse:
        return _GRULayer.apply(x.flip(1), *params).flip(1)
    return _GRULayer.apply(x, *params)


def gru_train_forward(gru: nn.GRU, x: Tensor) -> Tensor:
    """``gru(x)[0]`` for a batch-first ``nn.GRU`` with biases and a zero initial state."""
    out = x
    for k in range(gru.num_layers):
        if k > 0 and gru.dropout > 0 and gru.training:
            out = F.dropout(out, gru.dropout, training=True)
        fwd = _layer(gru, out, k, reverse=False)
        out = (
            torch.cat([fwd, _layer(gru, out, k, reverse=True)], dim=2) if gru.bidirectional else fwd
        )
    return out


def usable(gru: nn.Module, x: Tensor) -> bool:
    """Whether :func:`gru_train_forward` applies: training a CPU float32 GRU."""
    return (
        isinstance(gru, nn.GRU)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and gru.batch_first
        and gru.bias
        and not torch.is_autocast_enabled("cpu")
    )
