"""com.microsoft.DynamicQuantizeLSTM (ONNX Runtime's contrib op, as onnxruntime.quantization's
quantize_dynamic writes an LSTM): an LSTM whose W and R are int8/uint8 with a scale per direction or
per gate column and a zero point, and whose float operands are quantized to uint8 on every run.

Inputs: X 0, W 1 (dirs, input, 4*hidden: transposed against ONNX LSTM's), R 2 (dirs, hidden,
4*hidden), B 3, sequence_lens 4, initial_h 5, initial_c 6, P 7, W_scale 8, W_zero_point 9, R_scale 10,
R_zero_point 11; the attributes are LSTM's but layout (always 0). Outputs Y, Y_h, Y_c.

What ONNX Runtime computes, and so this op: X's first max(sequence_lens) steps are quantized as one
block (range over the block, always holding 0: scale (max - min) / 255, zero point rint(-min / scale),
x rounded half to even as DynamicQuantizeLinear does), multiplied by W - W_zero_point in exact
integers and scaled by x_scale * W_scale[column]. At each step the hidden state of the whole batch
(initial_h first, then each row's last h, or 0 for a row whose sequence has ended) is quantized the
same way and multiplied by R, added to X's product in float32; then the gates, bias (Wb + Rb),
peepholes, clip and activations as ONNX LSTM. ONNX Runtime quantizes the hidden state per block of
batch rows when it splits a batch over several threads (batch > 4, or >= 2 with hidden <= 256); flexnn
quantizes the batch as one block, as ONNX Runtime does on one thread. A node that leaves Y out has
ONNX Runtime multiply an ended row's last h instead of 0 (flexnn always computes Y, as if named).
ONNX Runtime takes one zero point per direction (all the same, 0 for int8); flexnn takes one per
column too.

W and R are stored with their zero points taken off, as int8 when the differences fit, else int16;
the integer products run in numba loops over the gate columns (int32 sums, exact). Never sliced: every
step reads all of R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, InputValueError, ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.jit import kernel
from flexnnd.ops.recurrent import LSTM, _act, _clip, _reference_act, _time

_NO_FLOATS = np.zeros(0, dtype=np.float32)
_NO_INTS = np.zeros(0, dtype=np.int32)
_NAMES = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
_NAMES += ("W_scale", "W_zero_point", "R_scale", "R_zero_point")


@kernel(inline="always", fastmath=False)
def _qparams(lo, hi):
    """uint8 scale and zero point of a range holding 0, as DynamicQuantizeLinear computes them."""
    scale = np.float32(1.0) if hi == lo else (hi - lo) / np.float32(255.0)
    zero = np.rint(min(max(np.float32(0.0) - lo / scale, np.float32(0.0)), np.float32(255.0)))
    return scale, zero


@kernel(inline="always", fastmath=False)
def _quantize(v, scale, zero):
    """v as uint8 minus the zero point (x / scale, not x * 1/scale: the rounding depends on it)."""
    q = min(max(np.rint(v / scale) + zero, np.float32(0.0)), np.float32(255.0))
    return np.int16(q - zero)


@kernel(inline="always")
def _row_times(a, a0, k, w, w0, n, acc):
    """acc[:n] = a[a0 : a0+k] @ w[w0 : w0 + k*n] viewed (k, n), in int32 (exact: |a|, |w| <= 255)."""
    for j in range(n):
        acc[j] = 0
    for kk in range(k):
        av = np.int32(a[a0 + kk])
        if av != 0:
            base = np.uint64(w0 + kk * n)
            for j in range(np.uint64(n)):
                acc[j] += av * np.int32(w[base + j])


@kernel(fastmath=False)
def quantized_lstm(
    dims, x, w, w_scale, r, r_scale, bias, peep, seq, h0, c0, y, yh, yc, acts, params, scratch, ints, shorts
):
    """The whole op; -1, or the batch row whose sequence length is outside [0, steps] (then nothing
    is written). x (T, N, I), y (T, D, N, H), states (D, N, H), all flat; w, r (D, K, 4H) with the
    zero point off; scales (D, 4H); bias (D, 4H) = Wb + Rb or empty; acts/params as recurrent's
    kernel. `scratch` holds X W (T*N*4H), h, c (N*H each) and one row's gates (4H); `ints` one row's
    integer sums (4H); `shorts` X quantized (T*N*I), then h quantized (N*H)."""
    steps, batch, inputs, hidden, dirs = dims[0], dims[1], dims[2], dims[3], dims[4]
    reverse_first, input_forget = dims[5], dims[6]
    for n in range(batch):
        if seq.size > 0 and not 0 <= seq[n] <= steps:
            return n
    gh = 4 * hidden
    hh = hidden
    longest = steps
    if seq.size > 0:
        longest = 0
        for n in range(batch):
            longest = max(longest, seq[n])
    rows = longest * batch
    h_at, c_at, g_at = (
        steps * batch * gh,
        steps * batch * gh + batch * hh,
        steps * batch * gh + 2 * batch * hh,
    )
    hq_at = rows * inputs
    clip = params[0]
    lo, hi = np.float32(0.0), np.float32(0.0)  # X's range over the steps run, as ORT's one GEMM
    for i in range(rows * inputs):
        lo, hi = min(lo, x[i]), max(hi, x[i])
    xs, xz = _qparams(lo, hi)
    for i in range(rows * inputs):
        shorts[i] = _quantize(x[i], xs, xz)
    for d in range(dirs):
        reverse = d == 1 or reverse_first
        f_code, g_code, h_code = acts[3 * d], acts[3 * d + 1], acts[3 * d + 2]
        fa, ga, ha = params[1 + 3 * d], params[2 + 3 * d], params[3 + 3 * d]
        fb, gb, hb = params[7 + 3 * d], params[8 + 3 * d], params[9 + 3 * d]
        sc = d * gh
        for m in range(rows):  # X W per time step and row, in the input's order (ORT reverses rows)
            _row_times(shorts, m * inputs, inputs, w, d * inputs * gh, gh, ints)
            for j in range(gh):
                scratch[m * gh + j] = np.float32(ints[j]) * (xs * w_scale[sc + j])
        for n in range(batch):
            for k in range(hh):
                st = (d * batch + n) * hh + k
                scratch[h_at + n * hh + k] = h0[st] if h0.size > 0 else 0.0
                scratch[c_at + n * hh + k] = c0[st] if c0.size > 0 else 0.0
        for step in range(longest):
            # H as ORT multiplies it: initial_h of every row at step 0, then a row's last h, or 0 once
            # its sequence has ended (ORT's Y row of the previous step)
            lo, hi = np.float32(0.0), np.float32(0.0)
            for n in range(batch):
                if step == 0 or step <= (seq[n] if seq.size > 0 else steps):
                    for k in range(hh):
                        v = scratch[h_at + n * hh + k]
                        lo, hi = min(lo, v), max(hi, v)
            hs, hz = _qparams(lo, hi)
            for n in range(batch):
                held = step == 0 or step <= (seq[n] if seq.size > 0 else steps)
                for k in range(hh):
                    v = scratch[h_at + n * hh + k] if held else np.float32(0.0)
                    shorts[hq_at + n * hh + k] = _quantize(v, hs, hz)
            for n in range(batch):
                t = _time(step, n, seq, steps, reverse)
                if t < 0:
                    continue
                _row_times(shorts, hq_at + n * hh, hh, r, d * hh * gh, gh, ints)
                xrow = (t * batch + n) * gh
                for j in range(gh):
                    scratch[g_at + j] = np.float32(ints[j]) * (hs * r_scale[sc + j]) + scratch[xrow + j]
                hn, cn = h_at + n * hh, c_at + n * hh
                for k in range(hh):  # gates i o f c, added up in ORT's order
                    gi, go = scratch[g_at + k], scratch[g_at + hh + k]
                    gf, gc = scratch[g_at + 2 * hh + k], scratch[g_at + 3 * hh + k]
                    c = scratch[cn + k]
                    if peep.size > 0:
                        gi += c * peep[d * 3 * hh + k]
                        gf += c * peep[d * 3 * hh + 2 * hh + k]
                    if bias.size > 0:
                        gi += bias[sc + k]
                        gf += bias[sc + 2 * hh + k]
                        gc += bias[sc + 3 * hh + k]
                    i = _act(f_code, _clip(gi, clip), fa, fb)
                    f = 1.0 - i if input_forget else _act(f_code, _clip(gf, clip), fa, fb)
                    c = c * f + i * _act(g_code, _clip(gc, clip), ga, gb)
                    if peep.size > 0:
                        go += c * peep[d * 3 * hh + hh + k]
                    if bias.size > 0:
                        go += bias[sc + hh + k]
                    scratch[cn + k] = c
                    h = _act(h_code, c, ha, hb) * _act(f_code, _clip(go, clip), fa, fb)
                    scratch[hn + k] = h
                    y[((t * dirs + d) * batch + n) * hh + k] = h
        for n in range(batch):
            length = seq[n] if seq.size > 0 else steps
            for t in range(length, steps):  # past a row's end, Y is 0
                for k in range(hh):
                    y[((t * dirs + d) * batch + n) * hh + k] = 0.0
            for k in range(hh):
                st = (d * batch + n) * hh + k
                if yh.size > 0:
                    yh[st] = scratch[h_at + n * hh + k] if length > 0 else 0.0
                if yc.size > 0:
                    yc[st] = scratch[c_at + n * hh + k] if length > 0 else 0.0
    return -1


@register
@dataclass(frozen=True)
class DynamicQuantizeLSTM(LSTM):
    """ONNX Runtime's com.microsoft.DynamicQuantizeLSTM (opset 1 of that domain)."""

    op_type = "com.microsoft.DynamicQuantizeLSTM"
    const_inputs = (1, 2, 3, 7, 8, 9, 10, 11)
    optional_inputs = (3, 4, 5, 6, 7)

    @classmethod
    def accepted_attributes(cls, opset):
        return super().accepted_attributes(opset) - {"layout"}

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) != 12:
            raise UnsupportedOp(cls.op_type, node, opset, f"{len(consts)} inputs, the op takes 12")
        if "clip" in attrs and not float(attrs["clip"]) > 0:
            raise UnsupportedOp(cls.op_type, node, opset, f"clip {attrs['clip']} is not positive")
        return Op.from_onnx.__func__(cls, attrs, consts, node, opset)  # LSTM's caps its inputs at 8

    def output_dtypes(self, dtypes):
        dtypes = list(dtypes) + [None] * (12 - len(dtypes))
        weight = dtypes[1]
        if weight not in ("int8", "uint8") or dtypes[2] != weight:
            raise DtypeRefused(
                f"{self.op_type}: W and R must both be int8 or uint8, got {dtypes[1]}, {dtypes[2]}"
            )
        for pos, dtype in enumerate(dtypes):
            want = "int32" if pos == 4 else weight if pos in (1, 2, 9, 11) else "float32"
            if dtype is not None and dtype != want:
                raise DtypeRefused(f"{self.op_type}: input {_NAMES[pos]} is {dtype}; it takes {want} there")
        return ["float32"] * 3

    def _dims(self, shapes):
        op, dirs = self.op_type, self.dirs
        shapes = list(shapes) + [None] * (12 - len(shapes))
        x, r = shapes[0], shapes[2]
        if x is None or len(x) != 3:
            raise ShapeError(f"{op}: X must have rank 3, got shape {x}")
        steps, batch, inputs = x
        if r is None or len(r) != 3:
            raise ShapeError(f"{op}: R must have rank 3, got {r}")
        hidden = self.hidden_size or r[1]
        want = {
            1: (dirs, inputs, 4 * hidden),
            2: (dirs, hidden, 4 * hidden),
            3: (dirs, 8 * hidden),
            4: (batch,),
            5: (dirs, batch, hidden),
            6: (dirs, batch, hidden),
            7: (dirs, 3 * hidden),
        }
        for pos in range(1, 12):
            s = None if shapes[pos] is None else tuple(shapes[pos])
            if pos in (8, 9, 10, 11):  # a scale or zero point per direction, or per gate column
                if s is not None and s not in ((dirs,), (dirs, 4 * hidden)):
                    raise ShapeError(
                        f"{op}: {_NAMES[pos]} has shape {s}, expected ({dirs},) or ({dirs}, {4 * hidden})"
                    )
            elif s is not None and s != want[pos]:
                raise ShapeError(
                    f"{op}: {_NAMES[pos]} has shape {s}, expected {want[pos]} "
                    f"(X {tuple(x)}, hidden_size {hidden}, {self.direction})"
                )
        return steps, batch, inputs, hidden

    def prepare(self, consts):
        """W and R minus their zero points (int8 when that fits, else int16); the scales per column."""
        out = list(consts) + [None] * (12 - len(consts))
        for wpos, spos, zpos in ((1, 8, 9), (2, 10, 11)):
            w, scale, zero = out[wpos], out[spos], out[zpos]
            if w is None or scale is None or zero is None:
                continue
            w = np.asarray(w)
            dirs, cols = w.shape[0], w.shape[2]
            zero = np.broadcast_to(np.asarray(zero, np.int16).reshape(dirs, 1, -1), (dirs, 1, cols))
            diff = w.astype(np.int16) - zero
            fits = diff.min() >= -128 and diff.max() <= 127
            out[wpos] = np.ascontiguousarray(diff.astype(np.int8 if fits else np.int16))
            scale = np.asarray(scale, np.float32).reshape(dirs, -1)
            out[spos] = np.ascontiguousarray(np.broadcast_to(scale, (dirs, cols)))
        return out

    def _scratch_words(self, shapes) -> tuple[int, int, int]:
        """4-byte words of the kernel's float scratch, its int32 sums and its int16 operands."""
        steps, batch, inputs, hidden = self._dims(shapes)
        gh = 4 * hidden
        shorts = steps * batch * inputs + batch * hidden
        return steps * batch * gh + 2 * batch * hidden + gh, gh, (shorts + 1) // 2

    def scratch_bytes(self, shapes, part=None):
        return 4 * sum(self._scratch_words(shapes))

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"{self.op_type}.bind: the op is not sliced, got part {part}")
        ins = list(ins) + [None] * (12 - len(ins))
        shapes = [None if a is None else a.shape for a in ins]
        steps, batch, inputs, hidden = self._dims(shapes[:8])
        want = self.infer(shapes[:8], [None] * 8)
        if len(outs) > 3 or any(
            o.shape != s or o.dtype != np.float32 for o, s in zip(outs, want, strict=False)
        ):
            raise ShapeError(
                f"{self.op_type}.bind: outputs {[(o.shape, str(o.dtype)) for o in outs]}, expected {want}"
            )
        gh = 4 * hidden
        for pos in (8, 10):
            if ins[pos].shape != (self.dirs, gh):
                raise ShapeError(
                    f"{self.op_type}.bind: {_NAMES[pos]} must come prepared as ({self.dirs}, {gh})"
                )
        floats, n_ints, n_shorts = self._scratch_words(shapes[:8])
        need = floats + n_ints + n_shorts
        if scratch is None or scratch.size < need:
            raise ValueError(f"{self.op_type}.bind: scratch of {0 if scratch is None else scratch.size * 4} "
                             f"bytes, need {need * 4}")  # fmt: skip

        def flat(a, empty=_NO_FLOATS):
            return empty if a is None else reshape_view(a, (-1,))

        x, w, r = flat(ins[0]), flat(ins[1]), flat(ins[2])
        w_scale, r_scale = flat(ins[8]), flat(ins[10])
        bias = _NO_FLOATS
        if ins[3] is not None:  # Wb + Rb, as ORT adds them (once, at bind)
            b = ins[3]
            bias = np.ascontiguousarray(b[:, :gh] + b[:, gh:], np.float32).reshape(-1)
        peep, seq, h0, c0 = flat(ins[7]), flat(ins[4], _NO_INTS), flat(ins[5]), flat(ins[6])
        y = flat(outs[0])
        yh = flat(outs[1]) if len(outs) > 1 else _NO_FLOATS
        yc = flat(outs[2]) if len(outs) > 2 else _NO_FLOATS
        codes, alphas, betas = self.activation_table()
        params = np.zeros(13, np.float32)
        params[0], params[1 : 1 + alphas.size], params[7 : 7 + betas.size] = self.clip, alphas, betas
        dims = np.array(
            [steps, batch, inputs, hidden, self.dirs, self.direction == "reverse", self.input_forget],
            np.int64,
        )
        words = reshape_view(scratch, (-1,))
        work, ints = words[:floats], words[floats : floats + n_ints].view(np.int32)
        shorts = words[floats + n_ints : need].view(np.int16)
        op_type = self.op_type

        def run_dynamic_quantize_lstm():
            bad = quantized_lstm(
                dims,
                x,
                w,
                w_scale,
                r,
                r_scale,
                bias,
                peep,
                seq,
                h0,
                c0,
                y,
                yh,
                yc,
                codes,
                params,
                work,
                ints,
                shorts,
            )
            if bad >= 0:
                raise InputValueError(
                    "",
                    op_type,
                    f"sequence_lens[{bad}] = {seq[bad]} is outside [0, {steps}] (the sequence length)",
                )

        return run_dynamic_quantize_lstm

    # ---- reference ----------------------------------------------------------------------------
    def reference(self, ins):
        """ONNX Runtime's arithmetic in numpy (float32 where it computes in float32)."""
        ins = list(ins) + [None] * (12 - len(ins))
        x = np.asarray(ins[0], np.float32)
        steps, batch, _ = x.shape
        dirs, f32 = self.dirs, np.float32
        hidden = ins[2].shape[1]
        gh = 4 * hidden

        def weights(wpos, spos, zpos):
            w = np.asarray(ins[wpos]).astype(np.int64)
            zero = np.asarray(ins[zpos]).astype(np.int64).reshape(dirs, 1, -1)
            scale = np.broadcast_to(np.asarray(ins[spos], f32).reshape(dirs, -1), (dirs, gh))
            return w - zero, scale

        w, w_scale = weights(1, 8, 9)
        r, r_scale = weights(2, 10, 11)
        b = None if ins[3] is None else np.asarray(ins[3], f32)
        lens = np.full(batch, steps) if ins[4] is None else np.asarray(ins[4]).reshape(-1)
        if ((lens < 0) | (lens > steps)).any():
            raise ShapeError(f"{self.op_type}: sequence_lens {lens.tolist()} outside [0, {steps}]")
        longest = int(lens.max()) if batch else 0

        def quantized(a):
            lo, hi = f32(min(0.0, a.min(initial=0.0))), f32(max(0.0, a.max(initial=0.0)))
            scale = f32(1.0) if hi == lo else f32(hi - lo) / f32(255.0)
            zero = np.rint(f32(min(max(f32(0.0) - lo / scale, f32(0.0)), f32(255.0))))
            return np.clip(np.rint(a / scale) + zero, 0, 255).astype(np.int64) - int(zero), scale

        def state(a):
            return np.zeros((dirs, batch, hidden), f32) if a is None else np.asarray(a, f32)

        h0, c0 = state(ins[5]), state(ins[6])
        p = None if ins[7] is None else np.asarray(ins[7], f32)
        codes, alphas, betas = self.activation_table()

        def act(slot, v, clipped=True):
            if clipped and self.clip > 0:
                v = np.clip(v, f32(-self.clip), f32(self.clip))
            return _reference_act(int(codes[slot]), v, alphas[slot], betas[slot]).astype(f32)

        xq, xs = quantized(x[:longest])
        y = np.zeros((steps, dirs, batch, hidden), f32)
        yh, yc = np.zeros((dirs, batch, hidden), f32), np.zeros((dirs, batch, hidden), f32)
        for d in range(dirs):
            reverse = d == 1 or self.direction == "reverse"
            xp = (xq @ w[d]).astype(f32) * (xs * w_scale[d])  # (longest, batch, 4H)
            bias = None if b is None else b[d, :gh] + b[d, gh:]
            h, c = h0[d].copy(), c0[d].copy()
            for step in range(longest):
                held = (lens >= step) | (step == 0)
                hq, hs = quantized(np.where(held[:, None], h, f32(0.0)))
                hr = (hq @ r[d]).astype(f32) * (hs * r_scale[d])
                for n in range(batch):
                    if step >= lens[n]:
                        continue
                    t = lens[n] - 1 - step if reverse else step
                    gates = hr[n] + xp[t, n]
                    gi, go, gf, gc = (gates[k * hidden : (k + 1) * hidden].copy() for k in range(4))
                    if p is not None:
                        gi += c[n] * p[d, :hidden]
                        gf += c[n] * p[d, 2 * hidden :]
                    if bias is not None:
                        gi, gf, gc = (
                            gi + bias[:hidden],
                            gf + bias[2 * hidden : 3 * hidden],
                            gc + bias[3 * hidden :],
                        )
                    i = act(3 * d, gi)
                    f = 1.0 - i if self.input_forget else act(3 * d, gf)
                    c[n] = c[n] * f + i * act(3 * d + 1, gc)
                    if p is not None:
                        go += c[n] * p[d, hidden : 2 * hidden]
                    if bias is not None:
                        go = go + bias[hidden : 2 * hidden]
                    h[n] = act(3 * d + 2, c[n], clipped=False) * act(3 * d, go)
                    y[t, d, n] = h[n]
            live = lens > 0
            yh[d] = np.where(live[:, None], h, 0.0)
            yc[d] = np.where(live[:, None], c, 0.0)
        return [y, yh, yc]
