"""8-bit activations (W8A8): ranges calibrated by the project's executor, coremltools' own passes.

coremltools 9.0 facts relied on (its source; docs/TOOL_FACTS.md "Activation quantization passes"):

* `cto.linear_quantize_activations` applies, by `_apply_graph_pass(..., spec_version=iOS17)`,
  `compression::insert_prefix_quantize_dequantize_pair` (a quantize/dequantize pair before the `x`
  of `conv`, `linear`, `avg_pool`, `max_pool`, and both inputs of an `add` of two live inputs),
  `compression::insert_suffix_quantize_dequantize_pair` (a pair after each op that got one, or
  after a relu-like activation behind it), then `common::dequantize_quantize_pair_elimination`.
  Options: `config` (an op whose config is None is skipped) and `activation_stats`
  ({tensor: {"rmin", "rmax"}}, read as fp16). It lifts a package below iOS17 to iOS17 silently
  (max(spec, iOS17)); refused here instead, as that would change the folder's target.
* Its calibration predicts through Core ML (macOS only) and keeps only the last sample's ranges
  (`_update_tensor_range`); here the executor gives min and max over every sample. Its concat
  adjustment (`_adjust_concat_surrounding_activation_stats`) is reused as it is.
* The suffix pair replaces every use of the op's output: an op in `keep_fp16` gets no pair of its
  own yet reads an 8-bit-rounded tensor when its producer is quantized, as do the norms, gelus,
  muls and attention's reshapes behind linears and adds (`quantization_summary` counts them).
"""

from collections import Counter
from pathlib import Path

import numpy as np

from sd3coreml.errors import PipelineError

# What linear_quantize_activations' docstring configures (OpLinearQuantizerConfig's defaults):
# symmetric int8, one fp16 scale per tensor and no zero point. The activation passes read only
# the config's mode and dtype (weight_threshold is for weights).
ACTIVATION_MODE, ACTIVATION_DTYPE = "linear_symmetric", "int8"
PASSES = (
    "compression::insert_prefix_quantize_dequantize_pair",
    "compression::insert_suffix_quantize_dequantize_pair",
    "common::dequantize_quantize_pair_elimination",
)
NOT_COMPUTED = frozenset({"const", "quantize", "dequantize"})


def _insert_passes():
    import coremltools.optimize.coreml  # noqa: F401  (registers the compression passes)
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    return PASS_REGISTRY[PASSES[0]], PASS_REGISTRY[PASSES[1]]


def _is_const(var) -> bool:
    return var.op is not None and var.op.op_type == "const"


def _live(var) -> bool:  # an activation: neither a const nor a weight decompressed from one
    return var.op is None or not (var.op.op_type == "const" or var.op.op_type.startswith("constexpr_"))


def _reads_dequantized(var) -> bool:
    return var.op is not None and var.op.op_type == "dequantize"


def always_kept(program) -> frozenset[str]:
    """Ops the passes handle that stay as they are in any case: those computing on integers (the
    text encoders' token-id arithmetic: coremltools' prefix pass would give them a quantize op of a
    float scale, which MIL refuses, and an id is no activation), and those whose output is a
    program output (coremltools 9.0's suffix pass fails on them: "cannot delete op ... that's
    block's output"; the text encoders' hidden_embeds comes from a residual add)."""
    from coremltools.converters.mil.mil import types

    prefix, _ = _insert_passes()
    function = program.functions["main"]
    outputs = {var.name for var in function.outputs}
    floats = (types.fp16, types.fp32)
    return frozenset(op.name for op in function.operations if op.op_type in prefix.SUPPORTED_OP_TYPES
                     and (op.outputs[0].dtype not in floats or op.outputs[0].name in outputs))  # fmt: skip


def handled_ops(program, keep_fp16=frozenset()) -> list:
    """The ops the insert passes visit, in program order: of their types, with a live `x`, neither
    in `keep_fp16` nor always kept."""
    prefix, _ = _insert_passes()
    skipped = frozenset(keep_fp16) | always_kept(program)
    return [op for op in program.functions["main"].operations
            if op.op_type in prefix.SUPPORTED_OP_TYPES and op.name not in skipped and not _is_const(op.x)]  # fmt: skip


def quantizable_ops(program) -> list:
    """The ops the passes give 8-bit activations when none is kept fp16, in program order."""
    return handled_ops(program, read_not_quantized(program))


def prefix_inputs(op) -> list:
    """The inputs the prefix pass reads the ranges of for `op`: its `x`, and the `y` of a binary op
    (an `add`) when that is live."""
    prefix, _ = _insert_passes()
    return [op.x] + ([op.y] if op.op_type in prefix.SUPPORTED_BINARY_OP_TYPES and not _is_const(op.y) else [])


def activation_behind(op):
    """The allowed activation (relu, sigmoid, ...) right behind `op`, which the suffix pass
    quantizes instead of `op`'s output, or None."""
    _, suffix = _insert_passes()
    children = op.outputs[0].child_ops
    return children[0] if children and children[0].op_type in suffix._allowed_activations else None


def suffix_tensor(op) -> str:
    """The tensor the suffix pass puts a pair after, for `op`."""
    behind = activation_behind(op)
    return (behind or op).outputs[0].name


def ranges_read(program, keep_fp16=frozenset()) -> dict[str, list[str]]:
    """{tensor: the ops on whose behalf the insert passes read its range}, in program order.

    The prefix pass reads its inputs (`prefix_inputs`; also an `add`'s `x` whose `y` is a const,
    which it then leaves alone); the suffix pass reads the op's output, and that of an allowed
    activation right behind it.
    """
    reads: dict[str, list[str]] = {}
    for op in handled_ops(program, keep_fp16):
        behind = activation_behind(op)
        names = [var.name for var in prefix_inputs(op)] + [op.outputs[0].name]
        names += [behind.outputs[0].name] if behind else []
        for name in names:
            reads.setdefault(name, []).append(op.name)
    return reads


def concat_groups(program) -> list[list[str]]:
    """[inputs..., output] of each concat whose output is not a program output, in program order
    (what coremltools' ModelDebugger._get_concat_op_info lists, there from the spec in set order)."""
    function = program.functions["main"]
    outputs = {var.name for var in function.outputs}
    return [
        [var.name for var in op.values] + [op.outputs[0].name]
        for op in function.find_ops(op_type="concat")
        if op.outputs[0].name not in outputs
    ]


def as_program(program_or_package):
    """A loaded MIL program from a program, an MLModel or a saved package's path."""
    from sd3coreml.convert.package import load_program as model_program
    from sd3coreml.verify.mil_executor import load_program

    if isinstance(program_or_package, (str, Path)):
        return load_program(Path(program_or_package))
    if hasattr(program_or_package, "get_spec"):
        return model_program(program_or_package)
    return program_or_package


def gather_activation_stats(program_or_package, samples) -> dict[str, dict[str, float]]:
    """{tensor: {"rmin", "rmax"}} over all `samples` ({input name: array} each), by the executor,
    for every program input and every tensor the activation passes read, sorted by name: the
    tensors' extremes (fp16 in our packages) as Python floats, concat ranges shared as coremltools does."""
    from coremltools.converters.mil.mil import types
    from coremltools.optimize.coreml.experimental._post_training_quantization import (
        _adjust_concat_surrounding_activation_stats,
    )

    from sd3coreml.verify.mil_executor import run_program

    program = as_program(program_or_package)
    if not samples:
        raise PipelineError("activation calibration needs at least one sample")
    function = program.functions["main"]
    kept = {*function.inputs, *ranges_read(program)}
    groups = concat_groups(program)
    watched = kept.union(*groups)  # a concat's other members widen a kept range
    stats: dict[str, dict[str, float]] = {}

    def record(name, value):
        low, high = float(np.min(value)), float(np.max(value))
        seen = stats.setdefault(name, {"rmin": low, "rmax": high})
        seen["rmin"], seen["rmax"] = min(seen["rmin"], low), max(seen["rmax"], high)

    def observe(op, values):
        for var, value in zip(op.outputs, values):
            if var.name in watched:
                record(var.name, value)

    for sample in samples:
        run_program(program, sample, observe=observe)  # checks the sample's names and shapes first
        for name, var in function.inputs.items():
            # The range the program sees: the sample in the input's declared dtype.
            record(name, np.asarray(sample[name]).astype(types.nptype_from_builtin(var.dtype)))
    _adjust_concat_surrounding_activation_stats(groups, stats)
    return {name: stats[name] for name in sorted(kept) if name in stats}


def activation_config(keep_fp16=frozenset()):
    """The OptimizationConfig for the insert passes; each op named in `keep_fp16` gets None."""
    import coremltools.optimize.coreml as cto

    quantized = cto.OpLinearQuantizerConfig(mode=ACTIVATION_MODE, dtype=ACTIVATION_DTYPE)
    return cto.OptimizationConfig(global_config=quantized, op_name_configs={name: None for name in sorted(keep_fp16)})


def refuse_below_ios17(model) -> None:
    from coremltools import _SPECIFICATION_VERSION_IOS_17

    version = model.get_spec().specificationVersion
    if version < _SPECIFICATION_VERSION_IOS_17:
        raise PipelineError(
            f"8-bit activations need iOS17's quantize/dequantize ops; this package is specification {version}, "
            "below iOS17: set conversion_target: iOS17 (or later) and convert again"
        )


def read_not_quantized(program) -> frozenset[str]:
    """The `add`s of a const: the prefix pass reads their ranges but leaves them alone (a causal
    mask's add holds -inf), so their ranges need no 8-bit scale and quantizing them means nothing."""
    return frozenset(op.name for op in program.functions["main"].find_ops(op_type="add") if _is_const(op.y))


def check_stats(program, stats, keep_fp16=frozenset()) -> None:
    """Refuse unknown `keep_fp16` names, and any range the passes read that is missing or unusable."""
    prefix, _ = _insert_passes()
    handled = {op.name for op in program.functions["main"].operations if op.op_type in prefix.SUPPORTED_OP_TYPES}
    if unknown := sorted(set(keep_fp16) - handled):
        raise PipelineError(f"keep_fp16 names {unknown[:3]}: no op of these names takes 8-bit activations here")
    left_alone = read_not_quantized(program)
    for name, ops in ranges_read(program, keep_fp16).items():
        if name not in stats:
            raise PipelineError(f"activation stats hold no range for tensor {name}: gather them on this package")
        if set(ops) <= left_alone:
            continue
        # The scale is max |range| / 127 in fp16: 0 or inf would quantize the tensor to garbage.
        peak = float(np.float16(max(abs(stats[name]["rmin"]), abs(stats[name]["rmax"]))))
        if not 0.0 < peak < np.inf:
            raise PipelineError(
                f"activation range of tensor {name} is [{stats[name]['rmin']}, {stats[name]['rmax']}] in fp16, no 8-bit "
                f"scale: calibrate on samples that reach it, or keep {ops[:3]} fp16"
            )


def quantize_activations(model, stats, keep_fp16=frozenset()):
    """The fp16 `model` (iOS17 or later) with coremltools' activation passes applied on `stats`:
    the passes, options and order of `cto.linear_quantize_activations`, calibration aside."""
    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models.utils import _apply_graph_pass

    from sd3coreml.convert.package import load_program

    refuse_below_ios17(model)
    program = load_program(model)
    check_stats(program, stats, keep_fp16)
    keep_fp16 = frozenset(keep_fp16) | always_kept(program)
    options = [PassOption("config", activation_config(keep_fp16)), PassOption("activation_stats", dict(stats))]
    passes = [PASS_REGISTRY[name] for name in PASSES]
    for insert in passes[:2]:
        insert.set_options(options)
    # The program loaded once for the check is the one transformed (as compress/weights.py does).
    return _apply_graph_pass(
        model, passes, spec_version=_SPECIFICATION_VERSION_IOS_17,
        pymil_load_func=lambda *args, **kwargs: program, skip_model_load=True,
    )  # fmt: skip


def activation_quantized_ops(program) -> dict[str, str]:
    """{op name: op type} of the ops computing on 8-bit activations: each of the passes' op types
    whose every live input comes through `dequantize`. Sorted by name."""
    prefix, _ = _insert_passes()
    found = {}
    for op in program.functions["main"].operations:
        live = [var for var in op.get_flattened_inputs() if _live(var)]
        if op.op_type in prefix.SUPPORTED_OP_TYPES and live and all(map(_reads_dequantized, live)):
            found[op.name] = op.op_type
    return dict(sorted(found.items()))


def quantization_summary(program) -> dict:
    """What 8-bit activations cover in a quantized `program`, by op type: the ops computing on
    8-bit activations, the fp16 ops reading an 8-bit-rounded tensor, and the other fp16 ops."""
    quantized = activation_quantized_ops(program)
    rounded, fp16 = Counter(), Counter()
    for op in program.functions["main"].operations:
        if op.op_type in NOT_COMPUTED or op.op_type.startswith("constexpr_") or op.name in quantized:
            continue
        reads_rounded = any(map(_reads_dequantized, op.get_flattened_inputs()))
        (rounded if reads_rounded else fp16)[op.op_type] += 1
    return {
        "quantize_ops": len(program.functions["main"].find_ops(op_type="quantize")),
        "quantized": dict(sorted(Counter(quantized.values()).items())),
        "fp16_reading_8bit": dict(sorted(rounded.items())),
        "fp16": dict(sorted(fp16.items())),
    }
