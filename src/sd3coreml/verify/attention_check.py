"""A block-range package whose attention is split per head, against its joint twin.

Both packages come from the same weights by the same conversion; only the attention's
arithmetic differs (convert/split_attention.py), so on the same inputs their outputs must agree
to fp16 rounding. Both run in the MIL executor on seeded inputs of the package's own shapes;
the bar (config `fidelity.attention_min_psnr_db`) was fixed before anything was measured. Each
package's own check against diffusers is the fidelity rule's, as for every package.
"""

from pathlib import Path

import numpy as np

from sd3coreml.atomic import write_json
from sd3coreml.errors import PipelineError


def seeded_feeds(package: Path, seed: int) -> dict[str, np.ndarray]:
    """Standard normal float32 feeds of the package's declared inputs, in their order."""
    from sd3coreml.convert.package import read_spec

    generator = np.random.default_rng(seed)
    return {
        feature.name: generator.standard_normal(tuple(feature.type.multiArrayType.shape)).astype(np.float32)
        for feature in read_spec(package).description.input
    }


def check_against_joint(package: Path, joint: Path, seed: int, min_psnr_db: float, out: Path) -> dict:
    """Write the figures of `package` against `joint` per output (PSNR, peak = max |joint|); raise
    when an output is under `min_psnr_db`."""
    from sd3coreml.verify.measure import compare_outputs, psnr
    from sd3coreml.verify.mil_executor import run_package

    package, joint = Path(package), Path(joint)
    feeds = seeded_feeds(package, seed)
    if set(feeds) != set(seeded_feeds(joint, seed)):
        raise PipelineError(f"{package.name} and {joint.name} take different inputs; they are not twins")
    outputs, reference = run_package(package, feeds), run_package(joint, feeds)
    figures = {name: psnr(expected, outputs[name]) for name, expected in reference.items()}
    failure = under_the_bar(package, joint, figures, min_psnr_db)
    record = {"package": str(package), "joint_package": str(joint), "seed": seed, "min_psnr_db": min_psnr_db,
              "executor": compare_outputs(outputs, reference), "passed": failure is None}  # fmt: skip
    write_json(Path(out), record)
    if failure:
        raise PipelineError(failure)
    return record


def under_the_bar(package: Path, joint: Path, figures: dict[str, float], min_psnr_db: float) -> str | None:
    """The one-line verdict on a split package whose outputs (PSNR per output) fall under the bar, else None."""
    under = {name: figure for name, figure in figures.items() if not figure >= min_psnr_db}
    if not under:
        return None
    shown = ", ".join(f"{name} {figure:.2f} dB" for name, figure in under.items())
    return (
        f"{Path(package).name} against its joint twin {Path(joint).name}: {shown}, under "
        f"fidelity.attention_min_psnr_db ({min_psnr_db} dB); the per-head attention does not compute the joint attention"
    )
