"""Check an op's backward against central finite differences in float64.

The output is projected onto a fixed random tensor R, and the check compares
the gradient of the scalar ``sum(f(x) * R)``. A plain ``sum(f(x))`` would hide
mistakes: for batch norm its gradient is identically zero, so a wrong
backward would pass.
"""
import numpy as np

from .backend import to_numpy
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree; the message says where and by how much."""


class GradcheckReport:
    """Per input: the analytic and numeric gradients and the worst disagreement."""

    def __init__(self):
        self.entries = []  # (input index, analytic, numeric, worst index, abs error, rel error)

    @property
    def ok(self):
        return all(e["ok"] for e in self.entries)

    def __str__(self):
        lines = []
        for e in self.entries:
            status = "ok" if e["ok"] else "MISMATCH"
            lines.append(
                f"input {e['input']} shape {e['shape']}: {status}; worst element {e['where']}: "
                f"analytic {e['analytic_value']:.8g} vs numeric {e['numeric_value']:.8g} "
                f"(abs error {e['abs_error']:.3g}, allowed {e['allowed']:.3g})")
        return "\n".join(lines)

    __repr__ = __str__


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Compare ``fn``'s backward with central differences for every input that requires grad.

    ``fn`` maps the tensors ``inputs`` to a tensor (or a tuple of tensors).
    Inputs should be float64. Returns a ``GradcheckReport``; when a gradient
    is off by more than ``atol + rtol * |numeric|`` it raises
    ``GradcheckError`` with that report (or returns it with ``ok`` False
    when ``raise_exception`` is False).
    """
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} has dtype {t.dtype}; use float64 so finite "
                            f"differences with eps={eps} are meaningful")
    rng = np.random.default_rng(seed)

    def outputs():
        out = fn(*inputs)
        return out if isinstance(out, (tuple, list)) else (out,)

    projections = [rng.standard_normal(o.shape) for o in outputs()]

    def objective():
        return sum(float((to_numpy(o.data).astype(np.float64) * r).sum())
                   for o, r in zip(outputs(), projections))

    # analytic: one backward of sum(f(x) * R)
    for t in inputs:
        if isinstance(t, Tensor):
            t.grad = None
    outs = outputs()
    total = None
    for o, r in zip(outs, projections):
        if not o.requires_grad:
            continue
        term = (o * Tensor(r.astype(o.dtype))).sum()
        total = term if total is None else total + term
    if total is not None:
        total.backward()

    report = GradcheckReport()
    for i, t in enumerate(inputs):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        analytic = np.zeros(t.shape) if t.grad is None else to_numpy(t.grad.data).astype(np.float64)
        numeric = np.zeros(t.shape)
        for index in np.ndindex(*t.shape):  # perturb one element in place (any memory layout)
            original = t.data[index]
            t.data[index] = original + eps
            plus = objective()
            t.data[index] = original - eps
            minus = objective()
            t.data[index] = original
            numeric[index] = (plus - minus) / (2 * eps)
        error = np.abs(analytic - numeric)
        allowed = atol + rtol * np.abs(numeric)
        excess = error - allowed
        worst = tuple(int(k) for k in np.unravel_index(int(np.nanargmax(np.where(np.isnan(excess), np.inf, excess))), t.shape)) if t.size else ()
        report.entries.append(dict(
            input=i, shape=t.shape, ok=bool((excess <= 0).all()), where=worst,
            analytic=analytic, numeric=numeric,
            analytic_value=float(analytic[worst]) if t.size else 0.0,
            numeric_value=float(numeric[worst]) if t.size else 0.0,
            abs_error=float(error[worst]) if t.size else 0.0,
            allowed=float(allowed[worst]) if t.size else 0.0))
    if not report.ok and raise_exception:
        raise GradcheckError("gradcheck failed\n" + str(report))
    return report
