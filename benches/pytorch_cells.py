"""The cells beyond PyTorch's four, written the way a PyTorch user would write them: the input
side of every step as one matmul over the whole sequence up front, then a TorchScript loop over
the steps, with the equations of the golden-variants README (the specification of each cell,
`tests/golden-variants/README.md` where the repo keeps it). Used by `pytorch_bench.py`; each
module's `forward(x, s0)` takes `[T, B, I]` and the initial states (`[]`: zeros) and returns
the output `[T, B, H]`.

Parameters are `nn.Parameter`s with PyTorch-like uniform init (+-1/sqrt(H)), so training times
include their gradients, as wgpu-rnn's backward computes them.
"""
import math
from typing import List

import torch
from torch import Tensor, nn
import torch.nn.functional as F


def _p(*shape, h):
    k = 1.0 / math.sqrt(h)
    return nn.Parameter(torch.empty(*shape).uniform_(-k, k))


def _gates(m: nn.Module, g: int, i: int, h: int):
    """PyTorch's four tensors for `g` gates: weight_ih, weight_hh, bias_ih, bias_hh."""
    m.h = h
    m.weight_ih, m.weight_hh = _p(g * h, i, h=h), _p(g * h, h, h=h)
    m.bias_ih, m.bias_hh = _p(g * h, h=h), _p(g * h, h=h)


class LstmPeephole(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        _gates(self, 4, i, h)
        self.weight_peephole = _p(3, h, h=h)

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        xw = F.linear(x, self.weight_ih, self.bias_ih)
        b, h = x.shape[1], self.h
        hs = s0[0] if len(s0) > 0 else x.new_zeros(b, h)
        c = s0[1] if len(s0) > 1 else x.new_zeros(b, h)
        wci, wcf, wco = self.weight_peephole[0], self.weight_peephole[1], self.weight_peephole[2]
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            a = xw[t] + F.linear(hs, self.weight_hh, self.bias_hh)
            ai, af, ag, ao = a.chunk(4, 1)
            i = torch.sigmoid(ai + wci * c)
            f = torch.sigmoid(af + wcf * c)
            c = f * c + i * torch.tanh(ag)
            o = torch.sigmoid(ao + wco * c)
            hs = o * torch.tanh(c)
            outs.append(hs)
        return torch.stack(outs)


class LstmCifg(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        _gates(self, 3, i, h)

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        xw = F.linear(x, self.weight_ih, self.bias_ih)
        b, h = x.shape[1], self.h
        hs = s0[0] if len(s0) > 0 else x.new_zeros(b, h)
        c = s0[1] if len(s0) > 1 else x.new_zeros(b, h)
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            a = xw[t] + F.linear(hs, self.weight_hh, self.bias_hh)
            af, ag, ao = a.chunk(3, 1)
            f = torch.sigmoid(af)
            c = f * c + (1 - f) * torch.tanh(ag)
            hs = torch.sigmoid(ao) * torch.tanh(c)
            outs.append(hs)
        return torch.stack(outs)


class GruResetBefore(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        _gates(self, 3, i, h)

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        xw = F.linear(x, self.weight_ih, self.bias_ih)
        b, h = x.shape[1], self.h
        hs = s0[0] if len(s0) > 0 else x.new_zeros(b, h)
        w_rz, b_rz = self.weight_hh[: 2 * h], self.bias_hh[: 2 * h]
        w_n, b_n = self.weight_hh[2 * h:], self.bias_hh[2 * h:]
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            xr, xz, xn = xw[t].chunk(3, 1)
            hr, hz = F.linear(hs, w_rz, b_rz).chunk(2, 1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + F.linear(r * hs, w_n, b_n))
            hs = (1 - z) * n + z * hs
            outs.append(hs)
        return torch.stack(outs)


class LstmLayerNorm(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        self.h = h
        self.weight_ih, self.weight_hh = _p(4 * h, i, h=h), _p(4 * h, h, h=h)
        self.bias = _p(4 * h, h=h)
        self.ln_ih_weight, self.ln_ih_bias = nn.Parameter(torch.ones(4 * h)), nn.Parameter(torch.zeros(4 * h))
        self.ln_hh_weight, self.ln_hh_bias = nn.Parameter(torch.ones(4 * h)), nn.Parameter(torch.zeros(4 * h))
        self.ln_c_weight, self.ln_c_bias = nn.Parameter(torch.ones(h)), nn.Parameter(torch.zeros(h))

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        h = self.h
        xw = F.layer_norm(F.linear(x, self.weight_ih), [4 * h], self.ln_ih_weight, self.ln_ih_bias) + self.bias
        hs = s0[0] if len(s0) > 0 else x.new_zeros(x.shape[1], h)
        c = s0[1] if len(s0) > 1 else x.new_zeros(x.shape[1], h)
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            v = xw[t] + F.layer_norm(F.linear(hs, self.weight_hh), [4 * h], self.ln_hh_weight, self.ln_hh_bias)
            vi, vf, vg, vo = v.chunk(4, 1)
            c = torch.sigmoid(vf) * c + torch.sigmoid(vi) * torch.tanh(vg)
            hs = torch.sigmoid(vo) * torch.tanh(F.layer_norm(c, [h], self.ln_c_weight, self.ln_c_bias))
            outs.append(hs)
        return torch.stack(outs)


class IndRnn(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        self.h = h
        self.weight_ih, self.weight_hh, self.bias_ih = _p(h, i, h=h), _p(h, h=h), _p(h, h=h)

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        xw = F.linear(x, self.weight_ih, self.bias_ih)
        hs = s0[0] if len(s0) > 0 else x.new_zeros(x.shape[1], self.h)
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            hs = torch.relu(xw[t] + self.weight_hh * hs)
            outs.append(hs)
        return torch.stack(outs)


class Sru(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        assert i == h, "SRU needs in == H"
        self.h = h
        self.weight_ih, self.weight_c, self.bias = _p(3 * h, i, h=h), _p(2, h, h=h), _p(2 * h, h=h)

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        h = self.h
        u = F.linear(x, self.weight_ih)
        vf, vr = self.weight_c[0], self.weight_c[1]
        bf, br = self.bias[:h], self.bias[h:]
        c = s0[0] if len(s0) > 0 else x.new_zeros(x.shape[1], h)
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            xt, uf, ur = u[t].chunk(3, 1)
            f = torch.sigmoid(uf + vf * c + bf)
            r = torch.sigmoid(ur + vr * c + br)
            c = f * c + (1 - f) * xt
            outs.append(r * c + (1 - r) * x[t])
        return torch.stack(outs)


class Mut1(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        assert i == h, "MUT1 needs in == H"
        self.h = h
        self.weight_xz, self.bias_z = _p(h, i, h=h), _p(h, h=h)
        self.weight_xr, self.weight_hr, self.bias_r = _p(h, i, h=h), _p(h, h, h=h), _p(h, h=h)
        self.weight_hh, self.bias_h = _p(h, h, h=h), _p(h, h=h)

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        z = torch.sigmoid(F.linear(x, self.weight_xz, self.bias_z))
        xr = F.linear(x, self.weight_xr, self.bias_r)
        tx = torch.tanh(x) + self.bias_h
        hs = s0[0] if len(s0) > 0 else x.new_zeros(x.shape[1], self.h)
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            r = torch.sigmoid(xr[t] + F.linear(hs, self.weight_hr))
            hs = torch.tanh(F.linear(r * hs, self.weight_hh) + tx[t]) * z[t] + hs * (1 - z[t])
            outs.append(hs)
        return torch.stack(outs)


class Jordan(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        self.h = h
        self.weight_ih, self.weight_hy, self.bias_ih = _p(h, i, h=h), _p(h, h, h=h), _p(h, h=h)
        self.weight_y, self.bias_y = _p(h, h, h=h), _p(h, h=h)

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        xw = F.linear(x, self.weight_ih, self.bias_ih)
        y = s0[0] if len(s0) > 0 else x.new_zeros(x.shape[1], self.h)
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            a = torch.tanh(xw[t] + F.linear(y, self.weight_hy))
            y = torch.tanh(F.linear(a, self.weight_y, self.bias_y))
            outs.append(y)
        return torch.stack(outs)


class Scrn(nn.Module):
    def __init__(self, i: int, h: int):
        super().__init__()
        s = max(1, h // 2)
        self.h, self.s = h, s
        self.weight_b, self.weight_p = _p(s, i, h=h), _p(h, s, h=h)
        self.weight_a, self.weight_r = _p(h, i, h=h), _p(h, h, h=h)

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        bx = 0.05 * F.linear(x, self.weight_b)
        ax = F.linear(x, self.weight_a)
        hs = s0[0] if len(s0) > 0 else x.new_zeros(x.shape[1], self.h)
        s = s0[1] if len(s0) > 1 else x.new_zeros(x.shape[1], self.s)
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            s = bx[t] + 0.95 * s
            hs = torch.sigmoid(F.linear(s, self.weight_p) + ax[t] + F.linear(hs, self.weight_r))
            outs.append(hs)
        return torch.stack(outs)


class Urnn(nn.Module):
    """The unitary RNN with complex tensors and torch.fft (norm "ortho": the unitary DFT)."""

    def __init__(self, i: int, h: int):
        super().__init__()
        assert h % 2 == 0, "URNN needs an even H"
        n = h // 2
        self.h, self.n = h, n
        self.weight_ih = _p(h, i, h=h)
        self.theta = nn.Parameter(torch.empty(3, n).uniform_(-math.pi, math.pi))
        self.reflection = nn.Parameter(torch.empty(4, n).uniform_(-1, 1))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("permutation", torch.randperm(n))

    def forward(self, x: Tensor, s0: List[Tensor]) -> Tensor:
        n = self.n
        u = F.linear(x, self.weight_ih)
        u = torch.complex(u[..., :n], u[..., n:])
        d1 = torch.polar(torch.ones_like(self.theta[0]), self.theta[0])
        d2 = torch.polar(torch.ones_like(self.theta[1]), self.theta[1])
        d3 = torch.polar(torch.ones_like(self.theta[2]), self.theta[2])
        v1 = torch.complex(self.reflection[0], self.reflection[1])
        v2 = torch.complex(self.reflection[2], self.reflection[3])
        n1 = (v1.conj() * v1).real.sum()
        n2 = (v2.conj() * v2).real.sum()
        z = torch.complex(s0[0][:, :n], s0[0][:, n:]) if len(s0) > 0 else torch.zeros(x.shape[1], n, dtype=u.dtype)
        outs: List[Tensor] = []
        for t in range(x.shape[0]):
            z = z * d1
            z = torch.fft.fft(z, norm="ortho")
            z = z - 2 * v1 * ((z * v1.conj()).sum(1, keepdim=True) / n1)
            z = z[:, self.permutation] * d2
            z = torch.fft.ifft(z, norm="ortho")
            z = z - 2 * v2 * ((z * v2.conj()).sum(1, keepdim=True) / n2)
            z = z * d3 + u[t]
            m = torch.sqrt(z.real * z.real + z.imag * z.imag + 1e-5)
            z = z * (torch.relu(m + self.bias) / m)
            outs.append(torch.cat([z.real, z.imag], 1))
        return torch.stack(outs)


CELLS = {
    "LSTM_PEEPHOLE": LstmPeephole,
    "LSTM_CIFG": LstmCifg,
    "GRU_RESET_BEFORE": GruResetBefore,
    "LSTM_LAYERNORM": LstmLayerNorm,
    "INDRNN": IndRnn,
    "SRU": Sru,
    "MUT1": Mut1,
    "JORDAN": Jordan,
    "SCRN": Scrn,
    "URNN": Urnn,
}


def make(cell: str, i: int, h: int):
    """The cell's module, scripted by TorchScript (a user's fast path); returns (module, how)."""
    m = CELLS[cell](i, h)
    try:
        return torch.jit.script(m), "torchscript"
    except Exception:  # noqa: BLE001 - TorchScript refuses some ops; the eager loop then
        return m, "eager"
