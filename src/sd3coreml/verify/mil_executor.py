"""Run a saved Core ML ML Program (``.mlpackage``) on Linux, op by op.

Core ML predicts only on macOS, yet the pipeline wants to check numerically what each
converted package computes.  So we load the package's MIL program with coremltools and
evaluate the ops of its ``main`` function in program order:

* Op semantics come from coremltools wherever it has them: most op classes implement
  ``value_inference()`` (its constant folding), ``constexpr_*`` ops ``materialized_val_inference()``.
* A small registry of own evaluations covers the op types of our packages without either
  (silu, conv, batch_norm, gather_nd, upsample_nearest_neighbor) and replaces those whose
  coremltools version is wrong, far too slow or accumulates in fp16 (see each function).
* Numerics: an op computes from fp32 copies of its fp16 inputs, and each output is rounded
  to the dtype the program declares for it, as an fp16 device stores it between ops.
* Non-finite values raise NonFiniteValue naming the op they came from: an op making inf or
  NaN out of finite inputs (an overflow) at once.  A constant may hold inf on purpose (the
  text encoders' causal mask is -inf, which softmax turns into 0), so a constant's infs are
  followed instead and fail only where they turn into NaN or reach an output.
* Memory stays bounded: each value is dropped right after its last consumer has run.
* Ties: MIL leaves the winner of a tie in ``reduce_argmax``/``reduce_argmin`` unspecified.
  coremltools picks the first; ``ties="last"`` picks the last, so a test can show that a
  program's outputs do not depend on that choice.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace

import coremltools as ct
import numpy as np
from coremltools.converters.mil.frontend.milproto.load import load as _load_milproto
from coremltools.converters.mil.mil import types
from coremltools.converters.mil.mil.types.symbolic import is_symbolic

from sd3coreml.errors import PipelineError
from sd3coreml.verify.mil_ops import LAST_OF_TIES, OWN_EVALUATIONS, convert_float

# Ops that only move or pick elements: exact in the stored dtype, and they cannot make a
# non-finite value their input did not hold.
MOVES_ONLY = frozenset(
    {
        "concat",
        "expand_dims",
        "gather",
        "gather_along_axis",
        "identity",
        "reshape",
        "reverse",
        "slice_by_index",
        "slice_by_size",
        "split",
        "squeeze",
        "stack",
        "tile",
        "transpose",
    }
)


class NonFiniteValue(PipelineError, RuntimeError):
    """An op produced inf or NaN in a floating output."""


class UnsupportedOp(PipelineError, RuntimeError):
    """Neither coremltools nor this module can evaluate an op type of the program."""


class FeedMismatch(PipelineError, ValueError):
    """Feeds that are not the program's inputs (names, shapes)."""


def load_program(package: Path):
    """The MIL Program stored in `package`, weights included."""
    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    return _load_milproto(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)


def run_package(
    package: Path, inputs: Mapping[str, np.ndarray], *, observe=None, ties: str = "first"
) -> dict[str, np.ndarray]:
    """Outputs of `package` for `inputs`, keyed by output name, in the declared dtypes."""
    return run_program(load_program(package), inputs, observe=observe, label=Path(package).name, ties=ties)


def run_program(
    program,
    inputs: Mapping[str, np.ndarray],
    *,
    observe: Callable | None = None,
    substitute: Callable | None = None,
    reads: Callable | None = None,
    label: str = "program",
    ties: str = "first",
) -> dict[str, np.ndarray]:
    """Evaluate `program`'s main function; `observe(op, outputs)` sees every non-const op.

    A sensitivity analysis perturbs tensors so: `substitute(op, outputs)` returns what the op's
    consumers read instead of its outputs, and `reads(op)` ({input name: value} or None) what
    that one op reads instead of some of its inputs, its other consumers unaffected."""
    function = program.functions["main"]
    ops = [op for op in function.operations if op.op_type != "const"]
    release = _release_schedule(function, ops)
    origins: dict = {}  # var holding a non-finite value -> the op that value came from
    try:
        _bind_inputs(function, inputs, label)
        # Non-finite values are looked for explicitly; torch merely warns that it got
        # read-only arrays (weights), which it never writes.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for step, op in enumerate(ops):
                values = _evaluate_reading(op, reads(op) if reads else None, label, ties)
                if substitute is not None:
                    values = substitute(op, values)
                _follow_non_finite(op, values, origins, label)
                for var, value in zip(op.outputs, values):
                    _bind(var, value)
                if observe is not None:
                    observe(op, values)
                for var in release.get(step, ()):
                    _bind(var, None)
        for var in function.outputs:
            if var in origins:
                raise NonFiniteValue(_blame(label, origins[var], f"output '{var.name}'"))
        return {var.name: var.val for var in function.outputs}
    finally:
        for var in [*function.inputs.values(), *(var for op in ops for var in op.outputs)]:
            _bind(var, None)


def _evaluate_reading(op, instead: Mapping[str, np.ndarray] | None, label: str, ties: str) -> list[np.ndarray]:
    """The outputs of `op` evaluated on `instead`'s values for the inputs it names."""
    if not instead:
        return _evaluate(op, label, ties)
    swapped = {var: var.val for var in op.get_flattened_inputs() if var.name in instead}
    try:
        for var in swapped:
            _bind(var, instead[var.name])
        return _evaluate(op, label, ties)
    finally:
        for var, value in swapped.items():
            _bind(var, value)


def _bind(var, value) -> None:
    # coremltools ops read their inputs as `var.val`, i.e. `var._sym_val.val`, and Var has no
    # public setter: this is the one place that touches that private attribute.
    var._sym_val = None if value is None else SimpleNamespace(val=value)


def _is_const(var) -> bool:
    return var.op is not None and var.op.op_type == "const"


def _release_schedule(function, ops) -> dict[int, list]:
    """step -> the vars whose last consumer is ops[step]; consts and outputs stay."""
    last_use = {}
    for step, op in enumerate(ops):
        for var in [*op.outputs, *op.get_flattened_inputs()]:
            last_use[var] = step  # an output nobody reads goes right after it was made
    release: dict[int, list] = {}
    for var, step in last_use.items():
        if var not in function.outputs and not _is_const(var):
            release.setdefault(step, []).append(var)
    return release


def _bind_inputs(function, inputs: Mapping[str, np.ndarray], label: str) -> None:
    if unknown := sorted(set(inputs) - set(function.inputs)):
        raise FeedMismatch(f"{label}: unknown input(s) {unknown}; the program takes {sorted(function.inputs)}")
    for name, var in function.inputs.items():
        if name not in inputs:
            raise FeedMismatch(f"{label}: missing input '{name}'")
        value = np.asarray(inputs[name]).astype(types.nptype_from_builtin(var.dtype), copy=False)
        if not _shape_matches(value.shape, var.shape):
            raise FeedMismatch(f"{label}: input '{name}' has shape {value.shape}, expected {tuple(var.shape)}")
        _bind(var, value)


def _shape_matches(shape, declared) -> bool:
    return len(shape) == len(declared) and all(is_symbolic(d) or d == s for s, d in zip(shape, declared))


def _evaluate(op, label: str, ties: str = "first") -> list[np.ndarray]:
    """The outputs of `op`, each rounded to its declared dtype."""
    try:
        if ties == "last" and op.op_type in LAST_OF_TIES:
            raw = LAST_OF_TIES[op.op_type](op)
        elif op.op_type in OWN_EVALUATIONS:
            raw = OWN_EVALUATIONS[op.op_type](op)
        elif hasattr(op, "materialized_val_inference"):
            raw = op.materialized_val_inference()
        else:
            raw = op.value_inference() if op.op_type in MOVES_ONLY else _value_inference_fp32(op)
        if raw is None:
            raise NotImplementedError("value_inference returned None")
    except NotImplementedError as error:
        raise UnsupportedOp(f"{label}: op type '{op.op_type}' (op '{op.name}') cannot be evaluated") from error
    except Exception as error:
        error.add_note(f"while evaluating {label}: op '{op.name}' ({op.op_type})")
        raise
    values = [
        convert_float(np.asarray(value), types.nptype_from_builtin(var.dtype))
        for var, value in zip(op.outputs, raw if len(op.outputs) > 1 else (raw,))
    ]
    for var, value in zip(op.outputs, values):
        if not _shape_matches(value.shape, var.shape):
            raise RuntimeError(f"{label}: op '{op.name}' made shape {value.shape}, declared {tuple(var.shape)}")
    return values


def _value_inference_fp32(op):
    """coremltools' numpy implementation of `op`, fed fp32 copies of its fp16 activations.

    numpy fp16 arithmetic is ~8x slower than fp32 and reduces in fp16 (layer_norm's sum of
    squares overflows).  fp16 consts need no copy: numpy promotes them next to fp32.
    """
    widened = {var: var.val for var in op.get_flattened_inputs() if var.dtype == types.fp16 and not _is_const(var)}
    for var, value in widened.items():
        _bind(var, convert_float(value, np.float32))
    try:
        return op.value_inference()
    finally:
        for var, value in widened.items():
            _bind(var, value)


def _follow_non_finite(op, values, origins: dict, label: str) -> None:
    """Note where the non-finite outputs of `op` came from, or raise (see the module docstring)."""
    if op.op_type in MOVES_ONLY:  # passes a non-finite value on at most: no need to look
        if source := next((origins[var] for var in op.get_flattened_inputs() if var in origins), None):
            origins.update(dict.fromkeys(op.outputs, source))
        return
    for var, value in zip(op.outputs, values):
        if value.dtype.kind != "f" or _all_finite(value):
            continue
        if (source := _non_finite_source(op, origins)) is None:
            raise NonFiniteValue(_blame(label, op))
        if np.isnan(value).any():
            raise NonFiniteValue(_blame(label, source, f"op '{op.name}' ({op.op_type}) as NaN"))
        origins[var] = source


def _non_finite_source(op, origins: dict):
    for var in op.get_flattened_inputs():
        if var in origins:
            return origins[var]
        if _is_const(var) and (value := np.asarray(var.val)).dtype.kind == "f" and not _all_finite(value):
            return var.op
    return None


def _all_finite(value: np.ndarray) -> bool:
    if value.dtype == np.float16:  # exponent bits all set is inf/NaN: 2x faster than np.isfinite
        return not np.any((value.view(np.uint16) & 0x7C00) == 0x7C00)
    return bool(np.isfinite(value).all())


def _blame(label: str, source, reached: str | None = None) -> str:
    message = f"{label}: op '{source.name}' ({source.op_type}) produced a non-finite value"
    return message if reached is None else f"{message}, which reached {reached}"
