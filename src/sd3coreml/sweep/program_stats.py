"""What a saved package's ML program costs: weight bytes, compute ops, peak live activations,
and of each attention its ops and the largest attention scores one op makes.

Read from the package's protobuf alone (no Core ML runtime), so the sweep can compare stage
layouts on any host. The activation figure is an estimate from the program text: ops run in
program order, each intermediate tensor is alive from the op that makes it to its last use,
and the peak is the largest sum of alive tensors. Core ML may fuse ops or reuse buffers, so
on a device the real figure can be lower; weights (const and constexpr ops) are not counted.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.convert.package import read_spec

WEIGHTS_DIR = Path("Data/com.apple.CoreML/weights")
# An attention's projections in a block range package, by the weight consts named after their
# PyTorch module paths (module_transformer_blocks_0_attn_to_q_weight; docs/TOOL_FACTS.md):
# the ops between its input projections and its output projections are its core.
ATTENTION_WEIGHT = re.compile(r"(transformer_blocks_\d+_attn2?)_(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj"
                              r"|to_out_0|to_add_out)_weight")  # fmt: skip
OUTPUT_PROJECTIONS = ("to_out_0", "to_add_out")
# Ops whose outputs are weights, materialised once at load: not activations, not compute.
WEIGHT_OPS = ("const",)
WEIGHT_OP_PREFIX = "constexpr_"


@dataclass(frozen=True)
class ProgramStats:
    compute_ops: int
    weight_bytes: int
    package_bytes: int
    peak_activation_bytes: int


def dtype_bytes(data_type: int) -> float:
    """Bytes per element of a MIL DataType (FLOAT16 -> 2, INT4 -> 0.5, BOOL -> 1)."""
    from coremltools.proto import MIL_pb2

    name = MIL_pb2.DataType.Name(data_type)
    bits = re.search(r"\d+$", name)
    return int(bits.group()) / 8 if bits else 1.0


def tensor_bytes(value_type) -> int:
    if not value_type.HasField("tensorType"):
        return 0
    tensor = value_type.tensorType
    elements = 1
    for dimension in tensor.dimensions:
        # A flexible dimension has no size in the program; count it as 1.
        elements *= dimension.constant.size if dimension.HasField("constant") else 1
    return int(elements * dtype_bytes(tensor.dataType))


def is_weight_op(op_type: str) -> bool:
    return op_type in WEIGHT_OPS or op_type.startswith(WEIGHT_OP_PREFIX)


def main_block(spec):
    function = spec.mlProgram.functions["main"]
    return function, function.block_specializations[function.opset]


def operand_names(operation) -> list[str]:
    return [binding.name for argument in operation.inputs.values() for binding in argument.arguments if binding.name]


def peak_live_bytes(function, block) -> int:
    """Largest sum of alive activations at any op, program order (see module docstring)."""
    operations = [op for op in block.operations if not is_weight_op(op.type)]
    sizes = {value.name: tensor_bytes(value.type) for value in function.inputs}
    for operation in operations:
        sizes.update({value.name: tensor_bytes(value.type) for value in operation.outputs})
    end = len(operations)
    last_use = {name: end for name in block.outputs}
    for index, operation in enumerate(operations):
        for name in operand_names(operation):
            if name in sizes:
                last_use[name] = max(last_use.get(name, index), index)
    alive = {value.name for value in function.inputs}
    peak = sum(sizes[name] for name in alive)
    for index, operation in enumerate(operations):
        alive.update(value.name for value in operation.outputs)
        peak = max(peak, sum(sizes[name] for name in alive))
        alive = {name for name in alive if last_use.get(name, index) > index}
    return peak


def program_stats(package: Path) -> ProgramStats:
    package = Path(package)
    function, block = main_block(read_spec(package))
    weights = package / WEIGHTS_DIR
    return ProgramStats(
        compute_ops=sum(not is_weight_op(op.type) for op in block.operations),
        weight_bytes=checksums.tree_bytes(weights) if weights.is_dir() else 0,
        package_bytes=checksums.tree_bytes(package),
        peak_activation_bytes=peak_live_bytes(function, block),
    )


def attention_projections(block) -> dict[str, dict[str, list]]:
    """Attention (module path) -> its `inputs` (q, k, v projections) and `outputs` (out projections) ops."""
    found: dict[str, dict[str, list]] = {}
    for operation in block.operations:
        weight = operation.inputs["weight"].arguments[0].name if "weight" in operation.inputs else ""
        named = ATTENTION_WEIGHT.search(weight)
        if operation.type == "linear" and named:
            side = "outputs" if named[2] in OUTPUT_PROJECTIONS else "inputs"
            found.setdefault(named[1], {"inputs": [], "outputs": []})[side].append(operation)
    return found


def attention_cores(block) -> dict[str, list]:
    """Attention (module path) -> the compute ops of its core: downstream of its input projections
    and upstream of its output projections, in program order."""
    operations = list(block.operations)
    producer = {value.name: operation for operation in operations for value in operation.outputs}
    consumers: dict[str, list] = {}
    for operation in operations:
        for name in operand_names(operation):
            consumers.setdefault(name, []).append(operation)

    def children(operation) -> list:
        return [child for value in operation.outputs for child in consumers.get(value.name, [])]

    def parents(operation) -> list:
        return [producer[name] for name in operand_names(operation) if name in producer]

    cores = {}
    for attention, projections in attention_projections(block).items():
        bounds = {id(operation) for side in projections.values() for operation in side}
        core = reach(projections["inputs"], bounds, children) & reach(projections["outputs"], bounds, parents)
        cores[attention] = [op for op in operations if id(op) in core and not is_weight_op(op.type)]
    return cores


def reach(starts: list, stops: set[int], step) -> set[int]:
    """Ids of the ops reached from `starts` by `step`, neither the starts nor any op in `stops`."""
    seen: set[int] = set()
    pending = [op for start in starts for op in step(start)]
    while pending:
        operation = pending.pop()
        if id(operation) in seen or id(operation) in stops:
            continue
        seen.add(id(operation))
        pending += step(operation)
    return seen


def attention_ops(package: Path) -> dict[str, int]:
    """Compute ops per attention of a block range package (module path -> count); empty for a
    package without attention."""
    _, block = main_block(read_spec(Path(package)))
    return {attention: len(core) for attention, core in attention_cores(block).items()}


FUSED_ATTENTION = "scaled_dot_product_attention"


def value_types(function, block) -> dict:
    """{value name: its type} of the function's inputs and every op's outputs."""
    types = {value.name: value.type for value in function.inputs}
    types.update({value.name: value.type for operation in block.operations for value in operation.outputs})
    return types


def fused_attention_shape(operation, types: dict) -> tuple[int, int, int, int]:
    """(heads, queries, keys, bytes per score) of a scaled_dot_product_attention op: its query's
    leading dimensions, the key count, and the query's dtype."""
    query, key = (types[operation.inputs[name].arguments[0].name].tensorType for name in ("query", "key"))
    dims = [dimension.constant.size for dimension in query.dimensions]
    return math.prod(dims[:-2]), dims[-2], key.dimensions[-2].constant.size, dtype_bytes(query.dataType)


def scores_bytes(operation, types: dict) -> int:
    """The attention scores one op holds: a softmax's output, or what a fused
    scaled_dot_product_attention makes inside (heads x queries x keys, in its query's dtype)."""
    if operation.type == "softmax":
        return tensor_bytes(operation.outputs[0].type)
    if operation.type != FUSED_ATTENTION:
        return 0
    return int(math.prod(fused_attention_shape(operation, types)))


def attention_shape(package: Path) -> tuple[int, int, int, int] | None:
    """`fused_attention_shape` of the package's first fused attention op, or None without one."""
    function, block = main_block(read_spec(Path(package)))
    types = value_types(function, block)
    fused = (operation for operation in block.operations if operation.type == FUSED_ATTENTION)
    return next((fused_attention_shape(operation, types) for operation in fused), None)


def largest_attention_scores(package: Path) -> int:
    """Bytes of the largest attention scores one op of the package makes (0 without attention):
    what a Neural Engine must hold at once for that op."""
    function, block = main_block(read_spec(Path(package)))
    types = value_types(function, block)
    return max((scores_bytes(operation, types) for operation in block.operations), default=0)
