"""Python's ``repr`` of many float64 values at once, as an Arrow string array.

The JSON messages of the pipeline write each number as Python's ``repr``
does: the shortest text that reads back to the same double (Steele & White,
"How to print floating-point numbers accurately", 1990; the shortest-digits
search of Gay's ``dtoa`` in CPython, of double-conversion in Arrow), in
fixed notation for 1e-4 <= |v| < 1e16 and exponent notation otherwise
(``1e-05``, ``1.5e+16``: at least two exponent digits).

Arrow's cast of float64 to string finds the same shortest digits, and does
so in C++; only its layout differs (``1`` for ``1.0``, ``0.00001`` for
``1e-05``, ``1e+15`` for ``1000000000000000.0``).  :func:`float_texts`
takes Arrow's text and lays each value's digits out again as Python would,
in one Numba pass over the string buffer (texts that already match are
copied).  About 100 ns per value in all, most of it Arrow's cast: a fifth
of what a ``repr`` call per value costs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

__all__ = ["float_texts"]

#: The longest repr of a double: "-2.2250738585072014e-308".
_MAX_TEXT = 24
#: Arrow writes fixed notation below this magnitude (and from 1e-6 up): texts of
#: 1e-4 <= |v| < 1e10 with a fraction are copied as they are.  The tests hold every
#: magnitude to ``repr``, so a change of Arrow's notation cannot pass unseen.
_ARROW_FIXED_BELOW = 1e10

_MINUS, _PLUS, _DOT, _ZERO, _E = (ord(c) for c in "-+.0e")


def float_texts(values: np.ndarray) -> pa.StringArray:
    """``repr(float(v))`` of every value, as one Arrow string array.

    Args:
        values: float64 values, all finite (NaN and infinities have no JSON
            form; callers refuse them first).

    >>> float_texts(np.array([0.5, 1.0, -0.0, 2.5e-05, 1e16, 123456789012345.6])).to_pylist()
    ['0.5', '1.0', '-0.0', '2.5e-05', '1e+16', '123456789012345.6']
    """
    x = np.ascontiguousarray(values, np.float64)
    if not np.isfinite(x).all():
        raise ValueError("float_texts: NaN or infinite value")
    n = x.shape[0]
    arrow = pa.array(x).cast(pa.string())  # the shortest round-trip digits, Arrow's layout
    _, offsets, data = arrow.buffers()
    magnitude = np.abs(x)
    # Where both write the digits in fixed notation with a point, the texts are the same.
    same = (magnitude >= 1e-4) & (magnitude < _ARROW_FIXED_BELOW) & (x != np.trunc(x))
    out = np.empty(n * _MAX_TEXT, np.uint8)
    out_offsets = np.empty(n + 1, np.int32)
    written = _python_layout(np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8),
                             np.frombuffer(offsets, np.int32, n + 1, arrow.offset * 4), same, out, out_offsets)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(out_offsets), pa.py_buffer(out[:written])])


@njit(cache=True, nogil=True)
def _python_layout(data: np.ndarray, offsets: np.ndarray, same: np.ndarray, out: np.ndarray,
                   out_offsets: np.ndarray) -> int:
    """Each number text of ``data`` (Arrow's layout) in Python's layout, into ``out``; returns its size.
    Texts where ``same`` is true are copied as they are.

    A text is ``[-]`` then digits with an optional point, then optionally
    ``e[+-]N``.  Its significant digits d1..dk and the exponent p of d1
    (value = d1.d2...dk x 10^p) are read, then written out again.
    """
    digits = np.empty(_MAX_TEXT, np.uint8)
    w = 0
    out_offsets[0] = 0
    for i in range(offsets.shape[0] - 1):
        j, end = offsets[i], offsets[i + 1]
        if same[i]:
            out[w:w + end - j] = data[j:end]
            w += end - j
            out_offsets[i + 1] = w
            continue
        if data[j] == _MINUS:
            out[w] = _MINUS
            w += 1
            j += 1
        k = 0  # significant digits read
        before_point = 0  # of them, before the point
        zeros_after_point = 0  # zeros between the point and d1 (values below 1)
        point = False
        while j < end and data[j] != _E:
            c = data[j]
            if c == _DOT:
                point = True
            elif k == 0 and c == _ZERO:
                if point:
                    zeros_after_point += 1
            else:
                digits[k] = c
                k += 1
                if not point:
                    before_point += 1
            j += 1
        if k == 0:  # zero, signed or not
            out[w] = _ZERO
            out[w + 1] = _DOT
            out[w + 2] = _ZERO
            w += 3
            out_offsets[i + 1] = w
            continue
        if j < end:  # exponent form: one digit before the point
            j += 1
            negative = data[j] == _MINUS
            if data[j] == _MINUS or data[j] == _PLUS:
                j += 1
            e = 0
            while j < end:
                e = e * 10 + (data[j] - _ZERO)
                j += 1
            p = -e if negative else e
        elif before_point > 0:
            p = before_point - 1
        else:
            p = -(zeros_after_point + 1)
        while k > 1 and digits[k - 1] == _ZERO:  # trailing zeros of an integer are not significant
            k -= 1
        if -4 <= p < 16:  # fixed notation
            if p < 0:  # 0.000ddd
                out[w] = _ZERO
                out[w + 1] = _DOT
                w += 2
                for _ in range(-p - 1):
                    out[w] = _ZERO
                    w += 1
                for q in range(k):
                    out[w] = digits[q]
                    w += 1
            elif p + 1 >= k:  # integral: ddd000.0
                for q in range(k):
                    out[w] = digits[q]
                    w += 1
                for _ in range(p + 1 - k):
                    out[w] = _ZERO
                    w += 1
                out[w] = _DOT
                out[w + 1] = _ZERO
                w += 2
            else:  # ddd.ddd
                for q in range(p + 1):
                    out[w] = digits[q]
                    w += 1
                out[w] = _DOT
                w += 1
                for q in range(p + 1, k):
                    out[w] = digits[q]
                    w += 1
        else:  # d.ddde-XX
            out[w] = digits[0]
            w += 1
            if k > 1:
                out[w] = _DOT
                w += 1
                for q in range(1, k):
                    out[w] = digits[q]
                    w += 1
            out[w] = _E
            out[w + 1] = _MINUS if p < 0 else _PLUS
            w += 2
            e = -p if p < 0 else p
            if e >= 100:
                out[w] = _ZERO + e // 100
                w += 1
            out[w] = _ZERO + (e // 10) % 10
            out[w + 1] = _ZERO + e % 10
            w += 2
        out_offsets[i + 1] = w
    return w
