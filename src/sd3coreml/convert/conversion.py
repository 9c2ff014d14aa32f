"""PyTorch module -> fp16 ML Program, with the contract's input and output names.

Inputs are float32 and outputs float16 (docs/APP_CONTRACT.md, "What a folder holds").
Tracing runs the real forward, so a caller may trace with smaller example inputs than the
package's shapes when its module has no shape-dependent constants; `ct.convert` receives the
full shapes.
"""

from dataclasses import dataclass

import coremltools as ct
import numpy as np
import torch

from sd3coreml.convert.fp16_overflow import vectorized_fp16_overflow


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]


class Float16Inputs(torch.nn.Module):
    """Run an fp16 module on the contract's fp32 inputs.

    Tracing in fp16 puts fp16 weights in the graph, so coremltools' FP16ComputePrecision
    pass has no fp32 constants to scan for overflow (60% of a 4-block stage's conversion);
    the program has the same ops and weights as an fp32 trace's. Not for token ids: fp16
    holds integers exactly only up to 2048.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, *inputs):
        return self.module(*(tensor.to(torch.float16) for tensor in inputs))


def random_inputs(shapes) -> tuple:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(*shape, generator=generator) for shape in shapes)


def feeds_sinusoid(op) -> bool:
    """True for sin/cos and every op upstream of them (the timestep's sinusoidal projection)."""
    if op.op_type in ("sin", "cos"):
        return True
    return any(feeds_sinusoid(child) for output in op.outputs for child in output.child_ops)


def fp16_except_sinusoids():
    """fp16 compute, but sin/cos and their arguments stay fp32: fp16 holds `t * freq` (up to
    1000 rad) to about 0.5 rad, which measured 36 dB on the Conditioning model's output."""
    return ct.transform.FP16ComputePrecision(op_selector=lambda op: not feeds_sinusoid(op))


def convert_module(
    module, inputs: list[TensorSpec], output_names: list[str], target: str, example=None, compute_precision=None
):
    """Trace `module` on `example` (default: seeded noise of the input shapes) and convert it."""
    example = example if example is not None else random_inputs([spec.shape for spec in inputs])
    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
    with vectorized_fp16_overflow():
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=s.name, shape=s.shape, dtype=np.float32) for s in inputs],
            outputs=[ct.TensorType(name=name, dtype=np.float16) for name in output_names],
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=compute_precision or ct.precision.FLOAT16,
            convert_to="mlprogram",
            skip_model_load=True,
        )
