"""An LSTM training pass for the CPU over ``nn.LSTM``'s own parameters, with optional
bfloat16 matrix products.

The same kind of pass as :mod:`seqmnist.models.cpu_gru`, for the LSTM (PyTorch's gate order
i, f, g, o; ``c' = f * c + i * g``, ``h' = o * tanh(c')``). Unlike ``nn.GRU``, ``nn.LSTM``
already trains on the CPU with oneDNN's fused LSTM kernel, whose cost is close to that of its
matrix products alone: in float32 this pass is slower than ``nn.LSTM`` (about 1.3x per
training step for 1x128 at batch 128 on 2 cores of an AVX512-BF16 EPYC). What it adds is
``gemm_dtype=torch.bfloat16`` (chosen by itself under CPU bf16 autocast, i.e.
``precision=bf16-mixed``): the matrix products in bf16 while the cell state, every
element-wise op, the saved activations, the weights and the gradients stay float32 (there,
about as fast as float32 ``nn.LSTM``).

* The gate rows are put in the order (g, i, f, o) once per pass and the gradients put back,
  so parameters, gradients and checkpoints are ``nn.LSTM``'s. tanh costs several sigmoids
  on the CPU, and ``tanh(a) = 2 s(2a) - 1``: the g rows are doubled (exactly), so one
  sigmoid activates all four gates, and the loop keeps ``2c`` so that ``tanh(c)`` is one
  more sigmoid. Other factors of two go into the weights the same way (``_BWD_SCALES``).
* Forward, time-major: one GEMM for the input projection of all steps, then per step one
  in-place ``addmm_`` and seven element-wise ops into contiguous per-step buffers.
* The derivative factors of every gate are computed once for all steps, in place of the
  gates.
* Backward: per step four element-wise ops and one ``addmm`` for ``dh``; the gradients of
  ``W_hh``, ``W_ih`` and the biases of all steps are then one GEMM, ``[h, x, 1]^T da``.

It is used only to train on the CPU (``model.net.cpu_kernel=fused``); evaluation and CUDA
(cuDNN) keep ``nn.LSTM``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _to_internal(t: Tensor, H: int, g_scale: float = 1.0) -> Tensor:
    """Rows (i, f, g, o) -> (g, i, f, o), the g rows times ``g_scale``."""
    g = t[2 * H : 3 * H]
    return torch.cat([g * g_scale if g_scale != 1.0 else g, t[: 2 * H], t[3 * H :]])


def _from_internal(t: Tensor, H: int) -> Tensor:
    """Rows (g, i, f, o) -> (i, f, g, o)."""
    return torch.cat([t[H : 3 * H], t[:H], t[3 * H :]])


# Power-of-two row scales (exact) of the gates (g, i, f, o) between the stored derivative
# factors and the true ones; see _LSTMLayer.forward.
_BWD_SCALES = (4.0, 2.0, 0.5, 2.0)


def _scale_rows(t: Tensor, H: int, scales) -> Tensor:
    return torch.cat([t[k * H : (k + 1) * H] * s for k, s in enumerate(scales)])


class _LSTMLayer(torch.autograd.Function):
    """One unidirectional LSTM layer over time-major ``(T, B, I)`` from a zero state.

    Takes and returns (as gradients) ``nn.LSTM``'s parameters in PyTorch's gate order. With
    ``gemm_dtype`` (e.g. ``torch.bfloat16``) the matrix products take their operands in that
    dtype; everything else is in ``x``'s dtype.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
        gemm_dtype: torch.dtype | None,
    ) -> Tensor:
        T, B, n_in = x.shape
        H = w_hh.shape[1]
        low = gemm_dtype is not None and gemm_dtype != x.dtype
        mdt = gemm_dtype if low else x.dtype
        # Scaled by powers of two (exact): tanh(a) = 2 s(2a) - 1 and a sigmoid costs a
        # fraction of a tanh, so the g rows are doubled and one sigmoid activates all four
        # gates; the loop keeps hh = h / 2, so W_hh is doubled; and 2c, so tanh(c) = 2 s(2c) - 1.
        w_ih2 = _to_internal(w_ih, H, g_scale=2.0).to(mdt)
        w_hh2_t = (_to_internal(w_hh, H, g_scale=2.0) * 2).to(mdt).t()
        bias2 = _to_internal(b_ih + b_hh, H, g_scale=2.0)
        x2 = x.reshape(T * B, n_in)
        if low:  # a copy of the product in x's dtype, then the bias in that dtype
            gates = torch.mm(x2.to(mdt), w_ih2.t()).to(x.dtype).add_(bias2).view(T, B, 4 * H)
        else:
            gates = torch.addmm(bias2, x2, w_ih2.t()).view(T, B, 4 * H)
        # gates: pre-activations of all steps, then sigmoids (g, i, f, o) step by step, where
        # the g block holds s_g = s(2 a_g), i.e. g = 2 s_g - 1; finally the derivative factors.
        # Per-step state in contiguous buffers (strided slots of one buffer are slower):
        gs = x.new_empty(T, B, H)  # g / 2
        cs = x.new_empty(T + 1, B, H)  # 2c: c_0 = 0 .. c_T
        tcs = x.new_empty(T, B, H)  # tanh(c) / 2
        hs = x.new_empty(T + 1, B, H, dtype=mdt)  # h / 2 (rounded to the GEMM dtype when low)
        cs[0].zero_()
        hs[0].zero_()
        steps = zip(
            gates.unbind(),
            gates[..., :H].unbind(),
            gates[..., H : 2 * H].unbind(),
            gates[..., 2 * H : 3 * H].unbind(),
            gates[..., 3 * H :].unbind(),
            gs.unbind(),
            cs[:-1].unbind(),
            cs[1:].unbind(),
            tcs.unbind(),
            hs[:-1].unbind(),
            hs[1:].unbind(),
            strict=True,
        )
        for t, (a_t, sg_t, i_t, f_t, o_t, g_t, c_t, c_next, tc_t, h_t, h_next) in enumerate(steps):
            if t > 0:  # h_0 = 0 adds nothing
                if low:
                    a_t.add_(torch.mm(h_t, w_hh2_t))
                else:
                    a_t.addmm_(h_t, w_hh2_t)
            a_t.sigmoid_()
            torch.sub(sg_t, 0.5, out=g_t)  # g / 2
            torch.mul(f_t, c_t, out=c_next).addcmul_(i_t, g_t, value=4)  # 2c' = f 2c + 4 i g/2
            torch.sigmoid(c_next, out=tc_t).sub_(0.5)  # tanh(c') / 2
            torch.mul(o_t, tc_t, out=h_next)  # h' / 2
        # Derivative factors of all steps, each scaled by a power of two (_BWD_SCALES):
        # d(a_g) = dc i (1 - g^2) = 4 dc [s_g (1 - s_g) i], d(a_i) = dc g i (1 - i) =
        # 2 dc [i (1 - i) g/2], d(a_f) = dc c_prev f (1 - f) = dc [f (1 - f) 2c_prev] / 2,
        # d(a_o) = dh tanh(c) o (1 - o) = 2 dh [o (1 - o) tanh(c)/2], in place of the gates.
        # The cell state's gradient is dc = dc' f' + dh k, k = o (1 - tanh(c)^2).
        sg, i, f, o = gates.split(H, dim=2)
        out = torch.mul(o, tcs).mul_(2) if low else hs[1:] * 2  # h, float32 also when low
        k = torch.addcmul(o, out, tcs, value=-2)
        f_kept = f.clone()  # for dc = dc' f'
        sg.addcmul_(sg, sg, value=-1).mul_(i)
        i.addcmul_(i, i, value=-1).mul_(gs)
        f.addcmul_(f, f, value=-1).mul_(cs[:-1])
        o.addcmul_(o, o, value=-1).mul_(tcs)
        # The operands of the weight gradients, [h_prev / 2, x, 1] per step in the GEMM
        # dtype, so that backward gets all three from one GEMM.
        z = x.new_empty(T, B, H + n_in + 1, dtype=mdt)
        z[..., :H].copy_(hs[:-1])
        z[..., H : H + n_in].copy_(x)
        z[..., H + n_in].fill_(1)
        ctx.gemm_dtype = mdt
        ctx.save_for_backward(w_ih, w_hh, z, gates, k, f_kept)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor):
        with torch.autocast("cpu", enabled=False):  # keep the dtypes chosen here
            return _layer_backward(ctx, dout)


def _layer_backward(ctx: Any, dout: Tensor):
    w_ih, w_hh, z, fac, k, f = ctx.saved_tensors
    T, B, H = k.shape
    mdt = ctx.gemm_dtype
    low = mdt != fac.dtype
    # The factors' scales go into the weights of the backward products (dh, dx) ...
    w_ih = _scale_rows(_to_internal(w_ih, H), H, _BWD_SCALES).to(mdt)
    w_hh = _scale_rows(_to_internal(w_hh, H), H, _BWD_SCALES).to(mdt)
    # d(pre-activations) / scales, (g, i, f, o), in the GEMM dtype.
    da = fac.new_empty(T, B, 4 * H, dtype=mdt)
    dh = dout[T - 1].clone(memory_format=torch.contiguous_format)
    dc = torch.zeros_like(dh)
    steps = zip(
        fac[..., : 3 * H].unflatten(-1, (3, H)).unbind(),
        fac[..., 3 * H :].unbind(),
        k.unbind(),
        f.unbind(),
        da.unbind(),
        da[..., : 3 * H].unflatten(-1, (3, H)).unbind(),
        da[..., 3 * H :].unbind(),
        strict=True,
    )
    douts = dout.unbind()
    for t, (fgif_t, fo_t, k_t, f_t, da_t, dgif_t, do_t) in reversed(list(enumerate(steps))):
        dc.addcmul_(dh, k_t)
        torch.mul(fgif_t, dc.unsqueeze(1), out=dgif_t)
        torch.mul(fo_t, dh, out=do_t)
        if t > 0:
            dc.mul_(f_t)
            if low:
                torch.add(douts[t - 1], torch.mm(da_t, w_hh), out=dh)
            else:
                torch.addmm(douts[t - 1], da_t, w_hh, out=dh)
    # ... and into the weight gradients (with hh = h / 2 for W_hh's), all three from one
    # GEMM: [hh_prev, x, 1]^T da.
    da2 = da.view(T * B, 4 * H)
    grads = (z[:T].view(T * B, -1).t() @ da2).t().to(fac.dtype)
    dw_hh = _from_internal(_scale_rows(grads[:, :H], H, [2 * s for s in _BWD_SCALES]), H)
    dw_ih = _from_internal(_scale_rows(grads[:, H:-1], H, _BWD_SCALES), H)
    db = _from_internal(_scale_rows(grads[:, -1], H, _BWD_SCALES), H)
    dx = (da2 @ w_ih).view(T, B, -1).to(fac.dtype) if ctx.needs_input_grad[0] else None
    return dx, dw_ih, dw_hh, db, db.clone(), None


def _layer(lstm: nn.LSTM, x: Tensor, k: int, reverse: bool, gemm_dtype: torch.dtype | None):
    sfx = f"_l{k}" + ("_reverse" if reverse else "")
    params = [getattr(lstm, f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if reverse:
        return _LSTMLayer.apply(x.flip(0), *params, gemm_dtype).flip(0)
    return _LSTMLayer.apply(x, *params, gemm_dtype)


def gemm_dtype_for_autocast() -> torch.dtype | None:
    """bfloat16 under CPU bf16 autocast (``precision=bf16-mixed``), else None (float32)."""
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return None


def lstm_train_forward(lstm: nn.LSTM, x: Tensor, gemm_dtype: torch.dtype | None = None) -> Tensor:
    """``lstm(x)[0]`` for a batch-first ``nn.LSTM`` with biases and a zero initial state.

    ``gemm_dtype=torch.bfloat16`` runs the matrix products in bfloat16, everything else in
    ``x``'s dtype. Under CPU bf16 autocast it is chosen by itself; autocast is switched off
    inside, so it never recasts the element-wise maths.
    """
    if gemm_dtype is None:
        gemm_dtype = gemm_dtype_for_autocast()
    with torch.autocast("cpu", enabled=False):
        out = x.transpose(0, 1).contiguous()  # time-major; (T, B, 28) is a small copy
        for k in range(lstm.num_layers):
            if k > 0 and lstm.dropout > 0 and lstm.training:
                out = F.dropout(out, lstm.dropout, training=True)
            fwd = _layer(lstm, out, k, False, gemm_dtype)
            if lstm.bidirectional:
                out = torch.cat([fwd, _layer(lstm, out, k, True, gemm_dtype)], dim=2)
            else:
                out = fwd
    return out.transpose(0, 1)  # a view: the head reads only the last step


def usable(lstm: nn.Module, x: Tensor) -> bool:
    """Whether :func:`lstm_train_forward` applies: training a CPU float32 LSTM (without
    projections), with no autocast or bf16 autocast (then with bf16 matrix products)."""
    return (
        isinstance(lstm, nn.LSTM)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 3
        and torch.is_grad_enabled()
        and lstm.batch_first
        and lstm.bias
        and lstm.proj_size == 0
        and (
            not torch.is_autocast_enabled("cpu")
            or torch.get_autocast_dtype("cpu") == torch.bfloat16
        )
    )
