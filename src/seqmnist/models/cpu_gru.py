"""A faster GRU training pass for the CPU, over ``nn.GRU``'s own parameters.

PyTorch's CPU ``nn.GRU`` has no oneDNN kernel (its LSTM has one) and runs as a chain of
small ATen ops differentiated by autograd step by step. A profile of GRU 3x200 at batch 64
puts most of the time in per-step matrix products and ~20 small element-wise ops per step
(plus ``cat``/``copy``). This layer keeps the same maths and parameters but:

* forward: one GEMM for the input projection of all steps (time-major throughout, so no
  layer transposes its input or output), then per step one ``mm`` and four fused
  element-wise ops written into preallocated per-step views;
* the derivative factors of every gate are computed once for all steps, vectorised;
* backward: per step one in-place ``addmm_`` and five multiplies; the weight gradients of all steps
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
    """One unidirectional GRU layer over time-major ``(T, B, I)`` from a zero state.

    Gates in PyTorch's order (r, z, n). Time-major in and out, so a stack of layers never
    transposes: each layer's output is the next one's input as it lies in memory.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        # The input side of all steps in one GEMM. The r and z halves of the recurrent bias
        # are added here too; only b_hn must stay inside the step, where r multiplies it.
        bias = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]])
        gi = torch.addmm(bias, x.reshape(T * B, -1), w_ih.t()).view(T, B, 3 * H)
        hs = x.new_empty(T + 1, B, H)  # h_0 (zeros) .. h_T
        hs[0].zero_()
        rz = x.new_empty(T, B, 2 * H)
        ns = x.new_empty(T, B, H)
        gh = x.new_empty(T, B, 3 * H)  # recurrent pre-activations; the n block includes b_hn
        w_hh_t, b_hn = w_hh.t(), b_hh[2 * H :]
        # Per-step views made once (unbind), not sliced anew in every step of the loop.
        steps = zip(
            gi[..., : 2 * H].unbind(),
            gi[..., 2 * H :].unbind(),
            gh.unbind(),
            gh[..., : 2 * H].unbind(),
            gh[..., 2 * H :].unbind(),
            rz.unbind(),
            rz[..., :H].unbind(),
            rz[..., H:].unbind(),
            ns.unbind(),
            hs[:-1].unbind(),
            hs[1:].unbind(),
            strict=True,
        )
        for gi_rz, gi_n, gh_t, gh_rz, gh_n, rz_t, r_t, z_t, n_t, h_t, h_next in steps:
            torch.mm(h_t, w_hh_t, out=gh_t)
            torch.add(gi_rz, gh_rz, out=rz_t).sigmoid_()
            torch.addcmul(gi_n, r_t, gh_n.add_(b_hn), out=n_t).tanh_()
            torch.lerp(n_t, h_t, z_t, out=h_next)  # n + z * (h - n)
        r, z = rz[..., :H], rz[..., H:]
        # With h' = n + z (h - n), n = tanh(a_n), a_n = gi_n + r * gh_n, r = s(a_r), z = s(a_z):
        a = (1 - z) * (1 - ns * ns)  # dL/da_n = dh' * a
        c = (hs[:-1] - ns) * z * (1 - z)  # dL/da_z = dh' * c
        e = gh[..., 2 * H :] * r * (1 - r)  # dL/da_r = dL/da_n * e
        ctx.save_for_backward(x, w_ih, w_hh, hs, r, z, a, c, e)
        return hs[1:]

    @staticmethod
    def backward(ctx: Any, dout: Tensor):
        x, w_ih, w_hh, hs, r, z, a, c, e = ctx.saved_tensors
        T, B, H = a.shape
        dgh = x.new_empty(T, B, 3 * H)  # d(recurrent pre-activations): [a_r, a_z, r * a_n]
        dan = x.new_empty(T, B, H)  # d(a_n), the input side's third block
        dh = x.new_zeros(B, H)
        steps = zip(
            dout.unbind(),
            a.unbind(),
            c.unbind(),
            e.unbind(),
            r.unbind(),
            z.unbind(),
            dan.unbind(),
            dgh.unbind(),
            dgh[..., :H].unbind(),
            dgh[..., H : 2 * H].unbind(),
            dgh[..., 2 * H :].unbind(),
            strict=True,
        )
        for do_t, a_t, c_t, e_t, r_t, z_t, dan_t, dgh_t, dr_t, dz_t, dn_t in reversed(list(steps)):
            dh += do_t
            torch.mul(dh, a_t, out=dan_t)
            torch.mul(dh, c_t, out=dz_t)
            torch.mul(dan_t, e_t, out=dr_t)
            torch.mul(dan_t, r_t, out=dn_t)
            dh.mul_(z_t).addmm_(dgh_t, w_hh)  # in place: no copy of dh into a new output
        dgh_flat = dgh.view(T * B, 3 * H)
        dgi = torch.cat([dgh[..., : 2 * H], dan], dim=2).view(T * B, 3 * H)
        dw_hh = dgh_flat.t() @ hs[:-1].reshape(T * B, H)
        dw_ih = dgi.t() @ x.reshape(T * B, -1)
        dx = (dgi @ w_ih).view(T, B, -1)
        return dx, dw_ih, dw_hh, dgi.sum(0), dgh_flat.sum(0)


def _layer(gru: nn.GRU, x: Tensor, k: int, reverse: bool) -> Tensor:
    sfx = f"_l{k}" + ("_reverse" if reverse else "")
    params = [getattr(gru, f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if reverse:
        return _GRULayer.apply(x.flip(0), *params).flip(0)
    return _GRULayer.apply(x, *params)


def gru_train_forward(gru: nn.GRU, x: Tensor) -> Tensor:
    """``gru(x)[0]`` for a batch-first ``nn.GRU`` with biases and a zero initial state."""
    out = x.transpose(0, 1).contiguous()  # time-major; (T, B, 28) is a small copy
    for k in range(gru.num_layers):
        if k > 0 and gru.dropout > 0 and gru.training:
            out = F.dropout(out, gru.dropout, training=True)
        fwd = _layer(gru, out, k, reverse=False)
        out = (
            torch.cat([fwd, _layer(gru, out, k, reverse=True)], dim=2) if gru.bidirectional else fwd
        )
    return out.transpose(0, 1)  # a view: the head reads only the last step


def usable(gru: nn.Module, x: Tensor) -> bool:
    """Whether :func:`gru_train_forward` applies: training a CPU float32 GRU (under CPU
    autocast too: the caller runs it in float32 with autocast off)."""
    return (
        isinstance(gru, nn.GRU)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and gru.batch_first
        and gru.bias
    )
