"""LSTM, GRU and RNN: one-layer recurrences over a sequence, every direction, layout and option.

Inputs (ONNX positions): X 0, W 1, R 2, B 3, sequence_lens 4, initial_h 5, then LSTM's initial_c 6
and P 7. W, R, B and P are weights (constants); sequence_lens (int32) and the initial states are
runtime tensors or constants. Outputs Y, Y_h (and LSTM's Y_c).

The input projection X @ W^T of every time step and direction is one BLAS matmul into scratch; the
recurrence then runs in one numba kernel, one batch row at a time (rows are independent, so each
row's sequence length just bounds its loop), a dot product of each gate row of R with the hidden
state per step. A sequence length outside [0, T] fails the request (InputValueError) before any
step runs. Recurrent ops are never sliced: their weights are read at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flexnnd.errors import DtypeRefused, InputValueError, ShapeError, UnsupportedOp
from flexnnd.ops.activation import exp32
from flexnnd.ops.base import COST_GEMM, Op, register
from flexnnd.ops.buffers import check_blas, reshape_view
from flexnnd.ops.jit import kernel

# Activation codes of the kernel, by lower-cased ONNX name (ONNX Runtime matches names so).
ACTIVATIONS = {
    "sigmoid": 0,
    "tanh": 1,
    "relu": 2,
    "affine": 3,
    "leakyrelu": 4,
    "thresholdedrelu": 5,
    "scaledtanh": 6,
    "hardsigmoid": 7,
    "elu": 8,
    "softsign": 9,
    "softplus": 10,
}
# (alpha, beta) defaults of the activations that take them (those of the ONNX ops of that name);
# None: the activation takes that parameter and it has no default, so it must be given.
_PARAMS = {
    "affine": (None, None),
    "leakyrelu": (0.01, None),
    "thresholdedrelu": (None, None),  # ONNX Runtime's default is not the op's 1.0: must be given
    "scaledtanh": (None, None),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, None),
}
_TAKES_BETA = {"affine", "scaledtanh", "hardsigmoid"}

_NO_FLOATS = np.zeros(0, dtype=np.float32)
_NO_INTS = np.zeros(0, dtype=np.int32)

KIND_LSTM, KIND_GRU, KIND_RNN = 0, 1, 2


@kernel(inline="always")
def _act(code, x, alpha, beta):
    if code == 0:
        return 1.0 / (1.0 + exp32(-x))
    if code == 1:  # 1 - 2 / (e^2x + 1): exact at the limits, absolute error ~1e-7 near 0
        return 1.0 - 2.0 / (exp32(2.0 * x) + 1.0)
    if code == 2:
        return max(x, 0.0)
    if code == 3:
        return alpha * x + beta
    if code == 4:
        return x if x >= 0.0 else alpha * x
    if code == 5:
        return x if x > alpha else 0.0
    if code == 6:
        return alpha * math.tanh(beta * x)
    if code == 7:
        return min(max(alpha * x + beta, 0.0), 1.0)
    if code == 8:
        return x if x >= 0.0 else alpha * (math.exp(x) - 1.0)
    if code == 9:
        return x / (1.0 + abs(x))
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@kernel(inline="always")
def _clip(x, clip):
    if clip > 0.0:
        return min(max(x, -clip), clip)
    return x


@kernel(inline="always")
def _axpy(dst, d0, src, s0, alpha, n):
    """dst[d0 : d0+n] += alpha * src[s0 : s0+n]; unsigned offsets let LLVM vectorize (buffers.py)."""
    i, j = np.uint64(d0), np.uint64(s0)
    for k in range(np.uint64(n)):
        dst[i + k] += alpha * src[j + k]


@kernel(inline="always")
def _time(step, n, seq, steps, reverse):
    """The time index batch row n is at on `step`, or -1 once past its sequence length."""
    length = seq[n] if seq.size > 0 else steps
    if step >= length:
        return -1
    return length - 1 - step if reverse else step


@kernel(inline="always")
def _times_r(acc, a0, a_ld, rt, r0, gh, h, h0, hidden, batch, col, width, step, seq, steps, reverse):
    """acc[a0 + n*a_ld + j] += h[h0 + n*hidden : ...] . R^T[:, col + j] for j < width, for each live
    row n: R^T's row k (contiguous) is read once per step for every batch row."""
    for k in range(hidden):
        for n in range(batch):
            if _time(step, n, seq, steps, reverse) >= 0:
                _axpy(acc, a0 + n * a_ld, rt, r0 + k * gh + col, h[h0 + n * hidden + k], width)


@kernel
def recurrence(dims, xp, rt, b, peep, seq, h0, c0, y, yh, yc, acts, params, state):
    """Run the recurrence on the projected inputs xp (W's bias not yet added); -1, or the batch row
    whose sequence length is outside [0, steps] (then nothing is written).

    dims holds the integers (see bind); offsets are in elements of flat arrays: xp[t*xp_t + n*xp_n +
    d*xp_d + j], y[t*y_t + d*y_d + n*y_n + k], the states (h0, c0, yh, yc) [d*s_d + n*s_n + k]; rt is
    R transposed, (dirs, hidden, gates*hidden). Empty seq/h0/c0/peep/b: absent. Per direction, three
    activation slots (the cell's f, g, h): codes in acts, alphas in params[1:7], betas in
    params[7:13]; params[0] is clip (0: none). `state` holds, per batch row, h, c, GRU's r*h (or
    Rh.h) and the gate sums: batch * (3 + gates) * hidden floats.
    """
    kind, xp_t, xp_n, xp_d, s_d, s_n = dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]
    y_t, y_d, y_n, dirs, steps, batch = dims[6], dims[7], dims[8], dims[9], dims[10], dims[11]
    hidden, gates, reverse_first, input_forget, lbr = dims[12], dims[13], dims[14], dims[15], dims[16]
    has_bias = b.size > 0
    clip = params[0]
    for n in range(batch):
        if seq.size > 0 and not 0 <= seq[n] <= steps:
            return n
    gh = gates * hidden
    hh = hidden
    h_at, c_at, rh_at, acc_at = 0, batch * hh, 2 * batch * hh, 3 * batch * hh
    for d in range(dirs):
        reverse = d == 1 or reverse_first
        f_code, g_code, h_code = acts[3 * d], acts[3 * d + 1], acts[3 * d + 2]
        fa, ga, ha = params[1 + 3 * d], params[2 + 3 * d], params[3 + 3 * d]
        fb, gb, hb = params[7 + 3 * d], params[8 + 3 * d], params[9 + 3 * d]
        r0 = d * hh * gh
        bb = d * 2 * gh
        pp = d * 3 * hh
        for n in range(batch):
            st = d * s_d + n * s_n
            live = (seq[n] if seq.size > 0 else steps) > 0  # a row of length 0 ends in zero states
            for k in range(hh):
                state[h_at + n * hh + k] = h0[st + k] if h0.size > 0 and live else 0.0
                state[c_at + n * hh + k] = c0[st + k] if c0.size > 0 and live else 0.0
        # GRU's candidate gate gets R's part apart from the others (after the reset gate, or scaled by it)
        summed = 2 * hh if kind == 1 else gh
        for step in range(steps):
            for n in range(batch):  # the gate sums start as X W^T + Wb (+ Rb)
                t = _time(step, n, seq, steps, reverse)
                if t < 0:
                    continue
                xrow = t * xp_t + n * xp_n + d * xp_d
                a = acc_at + n * gh
                for j in range(gh):
                    v = xp[xrow + j]
                    if has_bias:
                        v += b[bb + j]
                        if j < summed:
                            v += b[bb + gh + j]
                    state[a + j] = v
                if kind == 1:
                    for k in range(hh):  # Rbh, to which lbr's Rh . h is added
                        state[rh_at + n * hh + k] = b[bb + gh + 2 * hh + k] if has_bias else 0.0
            _times_r(
                state, acc_at, gh, rt, r0, gh, state, h_at, hh, batch, 0, summed, step, seq, steps, reverse
            )
            if kind == 1 and lbr:
                _times_r(
                    state,
                    rh_at,
                    hh,
                    rt,
                    r0,
                    gh,
                    state,
                    h_at,
                    hh,
                    batch,
                    2 * hh,
                    hh,
                    step,
                    seq,
                    steps,
                    reverse,
                )
            for n in range(batch):
                t = _time(step, n, seq, steps, reverse)
                if t < 0:
                    continue
                a, hn, cn, rn = acc_at + n * gh, h_at + n * hh, c_at + n * hh, rh_at + n * hh
                if kind == 0:  # LSTM, gates i o f c
                    for k in range(hh):
                        gi, go, gf = state[a + k], state[a + hh + k], state[a + 2 * hh + k]
                        c = state[cn + k]
                        if peep.size > 0:
                            gi += peep[pp + k] * c
                            gf += peep[pp + 2 * hh + k] * c
                        i = _act(f_code, _clip(gi, clip), fa, fb)
                        f = 1.0 - i if input_forget else _act(f_code, _clip(gf, clip), fa, fb)
                        c = f * c + i * _act(g_code, _clip(state[a + 3 * hh + k], clip), ga, gb)
                        if peep.size > 0:
                            go += peep[pp + hh + k] * c
                        state[cn + k] = c
                        state[hn + k] = _act(f_code, _clip(go, clip), fa, fb) * _act(h_code, c, ha, hb)
                elif kind == 1:  # GRU, gates z r h
                    for k in range(hh):
                        state[a + k] = _act(f_code, _clip(state[a + k], clip), fa, fb)  # z
                        r = _act(f_code, _clip(state[a + hh + k], clip), fa, fb)
                        if lbr:  # the candidate's sum is complete: X Wh + Wbh + r (Rh . h + Rbh)
                            state[a + 2 * hh + k] += r * state[rn + k]
                        else:  # r * h, which Rh multiplies next
                            state[rn + k] = r * state[hn + k]
                else:  # RNN
                    for k in range(hh):
                        state[hn + k] = _act(f_code, _clip(state[a + k], clip), fa, fb)
            if kind == 1:
                if not lbr:
                    _times_r(
                        state,
                        acc_at + 2 * hh,
                        gh,
                        rt,
                        r0,
                        gh,
                        state,
                        rh_at,
                        hh,
                        batch,
                        2 * hh,
                        hh,
                        step,
                        seq,
                        steps,
                        reverse,
                    )
                    for n in range(batch):
                        if _time(step, n, seq, steps, reverse) >= 0 and has_bias:
                            for k in range(hh):
                                state[acc_at + n * gh + 2 * hh + k] += b[bb + gh + 2 * hh + k]
                for n in range(batch):
                    if _time(step, n, seq, steps, reverse) < 0:
                        continue
                    a, hn = acc_at + n * gh, h_at + n * hh
                    for k in range(hh):
                        z = state[a + k]
                        cand = _act(g_code, _clip(state[a + 2 * hh + k], clip), ga, gb)
                        state[hn + k] = (1.0 - z) * cand + z * state[hn + k]
            for n in range(batch):
                t = _time(step, n, seq, steps, reverse)
                if t >= 0:
                    yrow = t * y_t + d * y_d + n * y_n
                    for k in range(hh):
                        y[yrow + k] = state[h_at + n * hh + k]
        for n in range(batch):
            st = d * s_d + n * s_n
            for t in range(seq[n] if seq.size > 0 else steps, steps):  # past a row's end, Y is 0
                yrow = t * y_t + d * y_d + n * y_n
                for k in range(hh):
                    y[yrow + k] = 0.0
            for k in range(hh):
                if yh.size > 0:
                    yh[st + k] = state[h_at + n * hh + k]
                if yc.size > 0:
                    yc[st + k] = state[c_at + n * hh + k]
    return -1


@dataclass(frozen=True)
class _Recurrent(Op):
    """What LSTM, GRU and RNN share: shapes, activations, binding; `kind` picks the cell."""

    const_inputs = (1, 2, 3)
    optional_inputs = (3, 4, 5)
    kind: ClassVar[int] = -1
    n_gates: ClassVar[int] = 0
    default_activations: ClassVar[tuple[str, ...]] = ()
    n_outputs: ClassVar[int] = 2

    hidden_size: int = 0
    direction: str = "forward"
    activations: tuple[str, ...] = ()
    activation_alpha: tuple[float, ...] = ()
    activation_beta: tuple[float, ...] = ()
    clip: float = 0.0  # 0: no clip (an ONNX clip must be positive)
    layout: int = 0

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        most = 8 if cls.kind == KIND_LSTM else 6
        if len(consts) > most:
            raise UnsupportedOp(
                cls.op_type, node, opset, f"{len(consts)} inputs, {cls.op_type} takes at most {most}"
            )
        if "clip" in attrs and not float(attrs["clip"]) > 0:
            raise UnsupportedOp(cls.op_type, node, opset, f"clip {attrs['clip']} is not positive")
        return super().from_onnx(attrs, consts, node, opset)

    @property
    def dirs(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    def check(self, node, opset):
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise UnsupportedOp(self.op_type, node, opset, f"direction {self.direction!r}")
        if self.layout not in (0, 1):
            raise UnsupportedOp(self.op_type, node, opset, f"layout {self.layout} is not 0 or 1")
        try:
            self.activation_table()
        except ValueError as e:
            raise UnsupportedOp(self.op_type, node, opset, str(e)) from None

    def activation_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per direction, three (code, alpha, beta) slots (the cell's f, g, h; unused ones Sigmoid)."""
        per_dir = len(self.default_activations)
        names = [a.lower() for a in (self.activations or self.default_activations * self.dirs)]
        if len(names) != per_dir * self.dirs:
            raise ValueError(
                f"{len(names)} activations given, {self.op_type} {self.direction} takes {per_dir * self.dirs}"
            )
        alphas, betas = list(self.activation_alpha), list(self.activation_beta)
        codes, a_out, b_out = (
            np.zeros(3 * self.dirs, np.int64),
            np.zeros(3 * self.dirs),
            np.zeros(3 * self.dirs),
        )
        for pos, name in enumerate(names):
            if name not in ACTIVATIONS:
                raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
            alpha, beta = _PARAMS.get(name, (0.0, 0.0))
            if name in _PARAMS:
                alpha = alphas.pop(0) if alphas else alpha
                if name in _TAKES_BETA:
                    beta = betas.pop(0) if betas else beta
                if alpha is None or (beta is None and name in _TAKES_BETA):
                    raise ValueError(f"activation {name!r} needs activation_alpha/activation_beta values")
            slot = 3 * (pos // per_dir) + pos % per_dir
            codes[slot], a_out[slot], b_out[slot] = ACTIVATIONS[name], alpha, beta or 0.0
        return codes, a_out.astype(np.float32), b_out.astype(np.float32)

    def output_dtypes(self, dtypes):
        for pos, dtype in enumerate(dtypes):
            want = "int32" if pos == 4 else "float32"
            if dtype is not None and dtype != want:
                raise DtypeRefused(f"input {pos} is {dtype}; {self.op_type} takes {want} there")
        return ["float32"] * self.n_outputs

    # ---- shapes -------------------------------------------------------------------------------
    def _dims(self, shapes) -> tuple[int, int, int, int]:
        """(steps, batch, input size, hidden size), every input's shape checked."""
        op, g, dirs = self.op_type, self.n_gates, self.dirs
        x, w, r = shapes[0], shapes[1], shapes[2]
        if x is None or len(x) != 3:
            raise ShapeError(f"{op}: X must have rank 3, got shape {x}")
        steps, batch = (x[1], x[0]) if self.layout else (x[0], x[1])
        if w is None or r is None or len(w) != 3 or len(r) != 3:
            raise ShapeError(f"{op}: W and R must have rank 3, got {w} and {r}")
        hidden = self.hidden_size or r[2]
        want = {
            1: (dirs, g * hidden, x[2]),
            2: (dirs, g * hidden, hidden),
            3: (dirs, 2 * g * hidden),
            4: (batch,),
            5: (batch, dirs, hidden) if self.layout else (dirs, batch, hidden),
            6: (batch, dirs, hidden) if self.layout else (dirs, batch, hidden),
            7: (dirs, 3 * hidden),
        }
        names = {1: "W", 2: "R", 3: "B", 4: "sequence_lens", 5: "initial_h", 6: "initial_c", 7: "P"}
        for pos in range(1, len(shapes)):
            if shapes[pos] is not None and tuple(shapes[pos]) != want[pos]:
                raise ShapeError(
                    f"{op}: {names[pos]} has shape {tuple(shapes[pos])}, expected {want[pos]} "
                    f"(X {tuple(x)}, hidden_size {hidden}, {self.direction}, layout {self.layout})"
                )
        return steps, batch, x[2], hidden

    def infer(self, shapes, consts):
        steps, batch, _, hidden = self._dims(shapes)
        if len(consts) > 4 and consts[4] is not None:
            lens = np.asarray(consts[4]).reshape(-1)
            bad = np.flatnonzero((lens < 0) | (lens > steps))
            if bad.size:
                raise ShapeError(
                    f"{self.op_type}: sequence_lens[{bad[0]}] = {lens[bad[0]]} is outside [0, {steps}]"
                )
        d = self.dirs
        y = (batch, steps, d, hidden) if self.layout else (steps, d, batch, hidden)
        state = (batch, d, hidden) if self.layout else (d, batch, hidden)
        return [y] + [state] * (self.n_outputs - 1)

    def prepare(self, consts):
        out = list(consts)
        if len(consts) > 2 and consts[2] is not None:  # R^T per direction: (hidden, gates*hidden)
            out[2] = np.ascontiguousarray(np.asarray(consts[2], np.float32).transpose(0, 2, 1))
        return out

    def scratch_bytes(self, shapes, part=None):
        steps, batch, _, hidden = self._dims(shapes)
        gh = self.n_gates * hidden
        return 4 * (steps * batch * self.dirs * gh + batch * (3 * hidden + gh))

    def flops(self, shapes, out_shapes):
        steps, batch, inputs, hidden = self._dims(shapes)
        return 2 * steps * batch * self.dirs * self.n_gates * hidden * (inputs + hidden)

    def cost_kind(self, shapes):
        return COST_GEMM

    def slice_axes(self, shapes, out_shapes):
        return ()  # every step reads all of W and R: it runs whole

    # ---- execution ----------------------------------------------------------------------------
    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"{self.op_type}.bind: {self.op_type} is not sliced, got part {part}")
        ins = list(ins) + [None] * (8 - len(ins))
        shapes = [None if a is None else a.shape for a in ins[: 8 if self.kind == KIND_LSTM else 6]]
        if ins[2] is not None:  # R comes prepared, transposed
            shapes[2] = (
                (ins[2].shape[0], ins[2].shape[2], ins[2].shape[1]) if ins[2].ndim == 3 else ins[2].shape
            )
        steps, batch, inputs, hidden = self._dims(shapes)
        want = self.infer(shapes, [None] * len(shapes))
        if len(outs) > len(want) or any(
            o.shape != s or o.dtype != np.float32 for o, s in zip(outs, want, strict=False)
        ):
            raise ShapeError(
                f"{self.op_type}.bind: outputs {[(o.shape, str(o.dtype)) for o in outs]}, expected {want}"
            )
        dirs, gh = self.dirs, self.n_gates * hidden
        need = self.scratch_bytes(shapes) // 4
        if scratch is None or scratch.size < need:
            raise ValueError(f"{self.op_type}.bind: scratch of {0 if scratch is None else scratch.size * 4} "
                             f"bytes, need {need * 4}")  # fmt: skip
        flat_scratch = reshape_view(scratch, (-1,))
        xp = reshape_view(flat_scratch[: steps * batch * dirs * gh], (steps * batch, dirs * gh))
        state = flat_scratch[steps * batch * dirs * gh : need]
        x2 = reshape_view(ins[0], (steps * batch, inputs))
        w2 = reshape_view(ins[1], (dirs * gh, inputs)).T
        check_blas(x2, w2, xp)
        xp_flat = reshape_view(xp, (-1,))
        row = dirs * gh
        xp_t, xp_n = (row, steps * row) if self.layout else (batch * row, row)
        if self.layout:  # Y (N, T, D, H); states (N, D, H)
            y_t, y_d, y_n, s_d, s_n = dirs * hidden, hidden, steps * dirs * hidden, hidden, dirs * hidden
        else:  # Y (T, D, N, H); states (D, N, H)
            y_t, y_d, y_n, s_d, s_n = dirs * batch * hidden, batch * hidden, hidden, batch * hidden, hidden

        def flat(a, empty=_NO_FLOATS):
            return empty if a is None else reshape_view(a, (-1,))

        r, b, peep = flat(ins[2]), flat(ins[3]), flat(ins[7])
        seq, h0, c0 = flat(ins[4], _NO_INTS), flat(ins[5]), flat(ins[6])
        y = flat(outs[0])
        yh = flat(outs[1]) if len(outs) > 1 else _NO_FLOATS
        yc = flat(outs[2]) if len(outs) > 2 else _NO_FLOATS
        codes, alphas, betas = self.activation_table()
        params = np.zeros(13, np.float32)  # clip, then 6 alphas and 6 betas (two directions' slots)
        params[0], params[1 : 1 + alphas.size], params[7 : 7 + betas.size] = self.clip, alphas, betas
        dims = np.array(
            [
                self.kind, xp_t, xp_n, gh, s_d, s_n, y_t, y_d, y_n, dirs, steps, batch, hidden,
                self.n_gates, self.direction == "reverse", getattr(self, "input_forget", 0),
                getattr(self, "linear_before_reset", 0),
            ],
            np.int64,
        )  # fmt: skip
        op_type = self.op_type

        def run_recurrent():
            np.matmul(x2, w2, out=xp)
            bad = recurrence(dims, xp_flat, r, b, peep, seq, h0, c0, y, yh, yc, codes, params, state)
            if bad >= 0:
                raise InputValueError(
                    "",
                    op_type,
                    f"sequence_lens[{bad}] = {seq[bad]} is outside [0, {steps}] (the sequence length)",
                )

        return run_recurrent

    # ---- reference ----------------------------------------------------------------------------
    def reference(self, ins):
        ins = list(ins) + [None] * (8 - len(ins))
        x = np.asarray(ins[0], dtype=np.float64)
        if self.layout:
            x = x.transpose(1, 0, 2)
        steps, batch, _ = x.shape
        w, r = np.asarray(ins[1], np.float64), np.asarray(ins[2], np.float64)
        dirs, g = self.dirs, self.n_gates
        hidden = r.shape[2]
        gh = g * hidden
        b = np.zeros((dirs, 2 * gh)) if ins[3] is None else np.asarray(ins[3], np.float64)
        lens = np.full(batch, steps) if ins[4] is None else np.asarray(ins[4]).reshape(-1)
        if ((lens < 0) | (lens > steps)).any():
            raise ShapeError(f"{self.op_type}: sequence_lens {lens.tolist()} outside [0, {steps}]")

        def state(a):
            if a is None:
                return np.zeros((dirs, batch, hidden))
            a = np.asarray(a, np.float64)
            return a.transpose(1, 0, 2) if self.layout else a

        h0, c0 = state(ins[5]), state(ins[6])
        p = None if ins[7] is None else np.asarray(ins[7], np.float64)
        codes, alphas, betas = self.activation_table()
        clip = self.clip

        def act(slot, v):
            v = np.clip(v, -clip, clip) if clip > 0 and slot is not None and slot[1] else v
            return _reference_act(int(codes[slot[0]]), v, float(alphas[slot[0]]), float(betas[slot[0]]))

        y = np.zeros((steps, dirs, batch, hidden))
        yh, yc = np.zeros((dirs, batch, hidden)), np.zeros((dirs, batch, hidden))
        for d in range(dirs):
            reverse = d == 1 or self.direction == "reverse"
            f, gg, hh = (3 * d, True), (3 * d + 1, True), (3 * d + 2, False)
            wb, rb = b[d, :gh], b[d, gh:]
            for n in range(batch):
                length = int(lens[n])
                h, c = (h0[d, n].copy(), c0[d, n].copy()) if length else (np.zeros(hidden), np.zeros(hidden))
                for step in range(length):
                    t = length - 1 - step if reverse else step
                    xw = w[d] @ x[t, n] + wb
                    hr = r[d] @ h + rb
                    if self.kind == KIND_LSTM:
                        gates = xw + hr
                        gi, go, gf, gc = np.split(gates, 4)
                        if p is not None:
                            gi = gi + p[d, :hidden] * c
                            gf = gf + p[d, 2 * hidden :] * c
                        i = act(f, gi)
                        fg = 1.0 - i if self.input_forget else act(f, gf)
                        c = fg * c + i * act(gg, gc)
                        if p is not None:
                            go = go + p[d, hidden : 2 * hidden] * c
                        h = act(f, go) * act(hh, c)
                    elif self.kind == KIND_GRU:
                        z = act(f, xw[:hidden] + hr[:hidden])
                        rg = act(f, xw[hidden : 2 * hidden] + hr[hidden : 2 * hidden])
                        rh_w = r[d, 2 * hidden :]
                        if self.linear_before_reset:
                            cand = xw[2 * hidden :] + rg * (rh_w @ h + rb[2 * hidden :])
                        else:
                            cand = xw[2 * hidden :] + rh_w @ (rg * h) + rb[2 * hidden :]
                        h = (1.0 - z) * act(gg, cand) + z * h
                    else:
                        h = act(f, xw + hr)
                    y[t, d, n] = h
                yh[d, n], yc[d, n] = h, c
        if self.layout:
            y, yh, yc = y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2), yc.transpose(1, 0, 2)
        outs = [y, yh, yc][: self.n_outputs]
        return [np.ascontiguousarray(o, dtype=np.float32) for o in outs]


def _reference_act(code, x, alpha, beta):
    with np.errstate(over="ignore"):
        return [
            lambda: 1.0 / (1.0 + np.exp(-x)),
            lambda: np.tanh(x),
            lambda: np.maximum(x, 0.0),
            lambda: alpha * x + beta,
            lambda: np.where(x >= 0, x, alpha * x),
            lambda: np.where(x > alpha, x, 0.0),
            lambda: alpha * np.tanh(beta * x),
            lambda: np.clip(alpha * x + beta, 0.0, 1.0),
            lambda: np.where(x >= 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0)),
            lambda: x / (1.0 + np.abs(x)),
            lambda: np.logaddexp(0.0, x),
        ][code]()


@register
@dataclass(frozen=True)
class LSTM(_Recurrent):
    """ONNX LSTM (gates i, o, f, c; f=Sigmoid, g=Tanh, h=Tanh by default), with peepholes P."""

    op_type = "LSTM"
    const_inputs = (1, 2, 3, 7)
    optional_inputs = (3, 4, 5, 6, 7)
    kind = KIND_LSTM
    n_gates = 4
    default_activations = ("Sigmoid", "Tanh", "Tanh")
    n_outputs = 3

    input_forget: int = 0


@register
@dataclass(frozen=True)
class GRU(_Recurrent):
    """ONNX GRU (gates z, r, h; f=Sigmoid, g=Tanh by default)."""

    op_type = "GRU"
    kind = KIND_GRU
    n_gates = 3
    default_activations = ("Sigmoid", "Tanh")

    linear_before_reset: int = 0


@register
@dataclass(frozen=True)
class RNN(_Recurrent):
    """ONNX RNN (Ht = f(Xt W^T + Ht-1 R^T + Wb + Rb), f=Tanh by default)."""

    op_type = "RNN"
    kind = KIND_RNN
    n_gates = 1
    default_activations = ("Tanh",)
