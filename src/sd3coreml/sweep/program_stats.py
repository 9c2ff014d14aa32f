"""What a saved package's ML program costs: weight bytes, compute ops, peak live activations.

Read from the package's protobuf alone (no Core ML runtime), so the sweep can compare stage
layouts on any host. The activation figure is an estimate from the program text: ops run in
program order, each intermediate tensor is alive from the op that makes it to its last use,
and the peak is the largest sum of alive tensors. Core ML may fuse ops or reuse buffers, so
on a device the real figure can be lower; weights (const and constexpr ops) are not counted.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.convert.package import read_spec

WEIGHTS_DIR = Path("Data/com.apple.CoreML/weights")
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
