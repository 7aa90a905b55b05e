"""Einsum (ONNX opset 12+) for the patterns exporters write, lowered to one batched matmul.

Exporters write Einsum for attention (`bhid,bhjd->bhij`), batched and broadcast matmuls
(`bij,bjk->bik`, `...ij,...jk->...ik`), transposes (`bhwc->bchw`), sums over letters (`ij->i`),
outer and elementwise products (`i,j->ij`, `bij,bij->bij`). Every two-operand equation is the same
computation: the letters in both operands and the output are a batch, those in one operand and the
output are its rows (M) or columns (N), and the letters missing from the output are contracted (K).
Each operand is arranged as (batch, M, K) and (batch, K, N), a view when its letters already lie in
that order (or its transpose, which BLAS reads as is), else a copy in the scratch; one np.matmul
writes (batch, M, N), straight into the output when its letters are in that order, else into the
scratch and then permuted into it. Without K, the product is an outer product per batch (a numba
loop: a matmul with K = 1 would call BLAS once per element). One operand: a permuting copy, and a
row sum over the letters the output drops.

A size-1 dimension is left out of the letters it carries, so it broadcasts against the other
operand. Repeated letters in one operand (diagonals, traces) and three or more operands are refused.
No weights and a scratch sized by the shapes: never sliced, it runs whole.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, replace

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import COST_GEMM, COST_MEMORY, Op, internal, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.jit import kernel
from flexnnd.ops.strided import Copy, bits, flat_bits, run_all

EINSUM_DTYPES = ("float32", "int32", "int64")
_ALIGN = 64


@kernel
def batched_outer(a, b, c, batch, m, n):
    """c[t, i, j] = a[t, i] * b[t, j] over flat (batch, m), (batch, n) and (batch, m, n) arrays."""
    for t in range(batch):
        for i in range(m):
            ai = a[t * m + i]
            row = (t * m + i) * n
            for j in range(n):
                c[row + j] = ai * b[t * n + j]


@kernel
def row_sums(src, dst, rows, cols):
    """dst[r] = sum of src[r, :] over a flat (rows, cols) array, cols >= 1."""
    for r in range(rows):
        base = r * cols
        acc = src[base]
        for k in range(1, cols):
            acc += src[base + k]
        dst[r] = acc


def parse_equation(equation: str) -> tuple[tuple[str, ...], str | None]:
    """The operand terms and the explicit output (None when implicit), spaces removed; raises
    ValueError saying what is wrong or not supported."""
    eq = "".join(equation.split())
    lhs, arrow, rhs = eq.partition("->")
    if "->" in rhs:
        raise ValueError("more than one '->'")
    terms = tuple(lhs.split(","))
    for term in (*terms, *([rhs] if arrow else [])):
        body = term.replace("...", "", 1)
        bad = sorted({c for c in body if c not in string.ascii_letters})
        if bad:
            raise ValueError(f"term {term!r} holds {bad}: letters and one '...' only")
        repeated = sorted({c for c in body if body.count(c) > 1})
        if repeated:
            raise ValueError(
                f"letter(s) {repeated} repeat in {term!r}: diagonals and traces are not supported"
            )
    if arrow:
        known = set("".join(terms))
        missing = sorted(set(rhs.replace("...", "")) - known)
        if missing:
            raise ValueError(f"output letter(s) {missing} appear in no operand")
        if "..." in rhs and not any("..." in t for t in terms):
            raise ValueError("the output has '...' but no operand has")
    return terms, (rhs if arrow else None)


@dataclass(frozen=True)
class _Layout:
    """How a node of given shapes runs: every letter list leaves out the letters of size 1 there."""

    operands: tuple[tuple[str, ...], ...]  # each operand's letters (of size > 1 in it)
    output: tuple[str, ...]  # the output's letters (of size > 1)
    out_shape: tuple[int, ...]  # the full ONNX output shape
    sizes: dict[str, int]
    # Two operands: which is the matmul's left one, the letter groups, and what needs a copy.
    left: int = 0
    batch: tuple[str, ...] = ()
    m: tuple[str, ...] = ()
    n: tuple[str, ...] = ()
    k: tuple[str, ...] = ()
    arrange: tuple[str, ...] = ("view", "view")  # per matmul side: "view", "transposed", "copy"
    copy_out: bool = False
    # One operand: the letters summed away.
    summed: tuple[str, ...] = ()

    def count(self, labels) -> int:
        return math.prod(self.sizes[c] for c in labels)

    def scratch_elements(self) -> list[int]:
        """Element counts of the scratch regions, in the order bind() takes them."""
        if len(self.operands) == 1:
            return [self.count(self.output) * self.count(self.summed)] if self.arrange[0] == "copy" else []
        regions = []
        if self.arrange[0] == "copy":
            regions.append(self.count(self.batch + self.m + self.k))
        if self.arrange[1] == "copy":
            regions.append(self.count(self.batch + self.k + self.n))
        if self.copy_out:
            regions.append(self.count(self.batch + self.m + self.n))
        return regions


def _two_operand(la, lb, out):
    """(batch, m, n, k, arrange, copy_out, copied elements) for `la` as the matmul's left side."""
    batch = tuple(c for c in out if c in la and c in lb)
    m = tuple(c for c in out if c in la and c not in lb)
    n = tuple(c for c in out if c in lb and c not in la)
    k = tuple(c for c in la if c not in out) + tuple(c for c in lb if c not in out and c not in la)
    arrange_a = "view" if la == batch + m + k else "transposed" if k and la == batch + k + m else "copy"
    arrange_b = "view" if lb == batch + k + n else "transposed" if k and lb == batch + n + k else "copy"
    copy_out = out != batch + m + n
    return batch, m, n, k, (arrange_a, arrange_b), copy_out


@register
@dataclass(frozen=True)
class Einsum(Op):
    """ONNX Einsum with one or two operands of one type (float32, int32, int64)."""

    op_type = "Einsum"
    equation: str = ""
    dtype: str = internal("float32")  # the operands' element type: it sizes the scratch

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, kept = super().from_onnx(attrs, consts, node, opset)
        terms, _ = parse_equation(op.equation)
        if len(consts) not in (1, 2):
            raise UnsupportedOp(cls.op_type, node, opset, f"{len(consts)} operands (flexnn takes one or two)")
        if len(terms) != len(consts):
            raise UnsupportedOp(
                cls.op_type,
                node,
                opset,
                f"equation {op.equation!r} names {len(terms)} operands, the node has {len(consts)}",
            )
        return op, kept

    def check(self, node, opset):
        try:
            parse_equation(self.equation)
        except ValueError as e:
            raise UnsupportedOp(self.op_type, node, opset, f"equation {self.equation!r}: {e}") from None

    def typed(self, dtypes):
        return replace(self, dtype=dtypes[0]) if dtypes and dtypes[0] else self

    def output_dtypes(self, dtypes):
        first = dtypes[0]
        for pos, dtype in enumerate(dtypes):
            if dtype not in EINSUM_DTYPES:
                raise DtypeRefused(f"Einsum: operand {pos} is {dtype}; takes {', '.join(EINSUM_DTYPES)}")
            if dtype != first:
                raise DtypeRefused(f"Einsum: operand {pos} is {dtype} but operand 0 is {first}; one type")
        return [first]

    # ---- shapes -----------------------------------------------------------------------------------
    def _layout(self, shapes) -> _Layout:
        terms, rhs = parse_equation(self.equation)
        if len(terms) != len(shapes) or any(s is None for s in shapes):
            raise ShapeError(f"Einsum {self.equation!r}: {len(terms)} operand(s), got shapes {list(shapes)}")
        ellipsis_ranks = []
        for term, shape in zip(terms, shapes, strict=True):
            letters = len(term.replace("...", ""))
            if ("..." in term and len(shape) < letters) or ("..." not in term and len(shape) != letters):
                raise ShapeError(
                    f"Einsum {self.equation!r}: operand {term!r} does not fit shape {list(shape)}"
                )
            ellipsis_ranks.append(len(shape) - letters if "..." in term else 0)
        broadcast = max(ellipsis_ranks, default=0)

        def labels(term, ell):
            head, dots, tail = term.partition("...")
            return (
                tuple(head) + tuple(str(broadcast - ell + i) for i in range(ell if dots else 0)) + tuple(tail)
            )

        full = [labels(t, e) for t, e in zip(terms, ellipsis_ranks, strict=True)]
        sizes: dict[str, int] = {}
        for term, shape in zip(full, shapes, strict=True):
            for c, d in zip(term, shape, strict=True):
                d = int(d)
                if d != 1 and sizes.get(c, 1) not in (1, d):
                    raise ShapeError(
                        f"Einsum {self.equation!r}: letter {c!r} is {sizes[c]} and {d} in shapes {list(shapes)}"
                    )
                sizes[c] = max(sizes.get(c, 1), d)
        if rhs is None:
            once = sorted(c for c in sizes if c.isalpha() and sum(t.count(c) for t in full) == 1)
            out_full = tuple(str(i) for i in range(broadcast)) + tuple(once)
        else:
            out_full = labels(rhs, broadcast)
        operands = tuple(
            tuple(c for c, d in zip(t, s, strict=True) if int(d) > 1)
            for t, s in zip(full, shapes, strict=True)
        )
        output = tuple(c for c in out_full if sizes[c] > 1)
        base = _Layout(operands, output, tuple(sizes[c] for c in out_full), sizes)
        if len(operands) == 1:
            summed = tuple(c for c in operands[0] if c not in output)
            arrange = "view" if not summed or operands[0] == output + summed else "copy"
            return replace(base, summed=summed, arrange=(arrange,))
        best = None
        for left in (0, 1):
            la, lb = operands[left], operands[1 - left]
            batch, m, n, k, arrange, copy_out = _two_operand(la, lb, output)
            layout = replace(base, left=left, batch=batch, m=m, n=n, k=k, arrange=arrange, copy_out=copy_out)
            copied = sum(layout.scratch_elements())
            if best is None or copied < best[0]:
                best = (copied, layout)
        return best[1]

    def infer(self, shapes, consts):
        return [self._layout(shapes).out_shape]

    def scratch_bytes(self, shapes, part=None):
        item = np.dtype(self.dtype).itemsize
        return sum(-(-n * item // _ALIGN) * _ALIGN for n in self._layout(shapes).scratch_elements())

    def flops(self, shapes, out_shapes):
        lay = self._layout(shapes)
        if len(lay.operands) == 1:
            return lay.count(lay.output + lay.summed)
        return 2 * lay.count(lay.batch + lay.m + lay.n + lay.k)

    def cost_kind(self, shapes):
        lay = self._layout(shapes)
        return COST_GEMM if len(lay.operands) == 2 and lay.k else COST_MEMORY

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights to cut: it runs whole

    # ---- execution --------------------------------------------------------------------------------
    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"Einsum.bind: Einsum is not sliced, got part {part}")
        lay = self._layout([x.shape for x in ins])
        y = outs[0]
        dtype = np.dtype(self.dtype)
        for name, a in [*((f"operand {i}", x) for i, x in enumerate(ins)), ("output", y)]:
            if a.dtype != dtype or not a.flags.c_contiguous:
                raise ShapeError(f"Einsum.bind: {name} {a.shape} {a.dtype}, want C-contiguous {dtype}")
        if y.shape != lay.out_shape:
            raise ShapeError(f"Einsum.bind: output {y.shape}, want {lay.out_shape}")
        regions = _regions(scratch, lay.scratch_elements(), dtype)
        if len(lay.operands) == 1:
            return _bind_one(lay, ins[0], y, regions)
        return _bind_two(lay, ins, y, regions)

    def reference(self, ins):
        terms, rhs = parse_equation(self.equation)
        eq = ",".join(terms) + ("" if rhs is None else "->" + rhs)
        dtype = np.asarray(ins[0]).dtype
        wide = np.float64 if dtype.kind == "f" else dtype
        return [np.asarray(np.einsum(eq, *(np.asarray(x, wide) for x in ins))).astype(dtype)]


def _regions(scratch, counts, dtype):
    """Typed, 64-byte aligned views of the scratch, one per element count."""
    if not counts:
        return []
    raw = reshape_view(scratch, (-1,)).view(np.uint8)
    views, offset = [], 0
    for n in counts:
        if offset + n * dtype.itemsize > raw.size:
            raise ValueError(
                f"Einsum.bind: scratch of {raw.size} bytes, regions of {counts} {dtype} need more"
            )
        views.append(raw[offset : offset + n * dtype.itemsize].view(dtype))
        offset += -(-n * dtype.itemsize // _ALIGN) * _ALIGN
    return views


def _arranged(lay, x, labels, target):
    """x's bits as a view over the letters `target` (letters x lacks repeat it: stride 0)."""
    flat = flat_bits(x)
    view = flat.reshape(tuple(lay.sizes[c] for c in labels))  # its size-1 dimensions left out
    missing = tuple(c for c in target if c not in labels)
    view = view.reshape(view.shape + (1,) * len(missing))
    order = labels + missing
    view = view.transpose([order.index(c) for c in target])
    return np.broadcast_to(view, tuple(lay.sizes[c] for c in target)), flat


def _copy_into(lay, x, labels, target, region):
    """A Copy putting x (letters `labels`) into `region` laid out by the letters `target`."""
    src_view, src = _arranged(lay, x, labels, target)
    dst = bits(region)
    return Copy.between(src_view, src, dst.reshape(src_view.shape), dst)


def _bind_one(lay, x, y, regions):
    (labels,) = lay.operands
    yb = flat_bits(y)
    if not lay.summed:  # a permutation, written straight into the output
        src_view, src = _arranged(lay, x, labels, lay.output)
        return Copy.between(src_view, src, yb.reshape(src_view.shape), yb)
    rows, cols = lay.count(lay.output), lay.count(lay.summed)
    steps = []
    if lay.arrange[0] == "copy":
        steps.append(_copy_into(lay, x, labels, lay.output + lay.summed, regions[0]))
        src = regions[0]
    else:
        src = reshape_view(x, (-1,))
    dst = reshape_view(y, (-1,))

    def einsum_sum():
        for step in steps:
            step()
        row_sums(src, dst, rows, cols)

    return einsum_sum


def _operand_view(lay, x, labels, groups, arrange):
    """x as the 3-D matmul operand (batch, rows, cols) whose letters are `groups` (three tuples)."""
    b, r, c = (lay.count(g) for g in groups)
    if arrange == "transposed":
        return reshape_view(x, (b, c, r)).transpose(0, 2, 1)
    return reshape_view(x, (b, r, c))


def _bind_two(lay, ins, y, regions):
    a, b = ins[lay.left], ins[1 - lay.left]
    la, lb = lay.operands[lay.left], lay.operands[1 - lay.left]
    steps = []
    free = list(regions)
    a_groups, b_groups = (lay.batch, lay.m, lay.k), (lay.batch, lay.k, lay.n)
    operands = []
    for x, labels, groups, arrange in ((a, la, a_groups, lay.arrange[0]), (b, lb, b_groups, lay.arrange[1])):
        if arrange == "copy":
            region = free.pop(0)
            steps.append(_copy_into(lay, x, labels, groups[0] + groups[1] + groups[2], region))
            x, arrange = region, "view"
        operands.append(_operand_view(lay, x, labels, groups, arrange))
    out_letters = lay.batch + lay.m + lay.n
    c = free.pop(0) if lay.copy_out else y
    shape = (lay.count(lay.batch), lay.count(lay.m), lay.count(lay.n))
    c3 = reshape_view(c, shape)
    if lay.copy_out:
        cb, yb = bits(c), flat_bits(y)
        c_view = cb.reshape(tuple(lay.sizes[ch] for ch in out_letters))
        c_view = c_view.transpose([out_letters.index(ch) for ch in lay.output])
        finish = [Copy.between(c_view, cb, yb.reshape(c_view.shape), yb)]
    else:
        finish = []
    before, after = run_all(steps) if steps else None, run_all(finish) if finish else None
    a3, b3 = operands
    if lay.k:

        def product():
            np.matmul(a3, b3, out=c3)

    else:
        af, bf, cf = (reshape_view(v, (-1,)) for v in (a3, b3, c3))
        batch, m, n = shape

        def product():
            batched_outer(af, bf, cf, batch, m, n)

    if before is None and after is None:
        return product

    def einsum_product():
        if before is not None:
            before()
        product()
        if after is not None:
            after()

    return einsum_product
