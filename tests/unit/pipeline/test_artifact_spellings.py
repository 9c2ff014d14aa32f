"""An artifact path has one spelling: pipeline/artifacts.py's patterns, filled in everywhere else."""

import ast
import re
from pathlib import Path

from sd3coreml.pipeline.artifacts import (
    PIECES,
    Artifacts,
    block_range_name,
    block_range_of,
    fill,
    folder_name,
    setting_of_package,
)
from sd3coreml.stages import BlockRange

REPO = Path(__file__).parents[3]
# The folder prefix, and a block range spelled as a path (blocks{start}..., blocks4-8).
SPELLINGS = re.compile(r"coremlsd3_|blocks\{|blocks\d+-\d+|\"blocks\" *[+%]|f\"blocks")


def code_strings(path: Path) -> list[str]:
    """The string literals of a Python file as written (f-strings whole), docstrings left out:
    prose may name a folder."""
    source = path.read_text()
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    inside_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    strings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            strings.append(ast.get_source_segment(source, node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings and id(node) not in inside_fstrings:
                strings.append(node.value)
    return strings


def rule_code(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]


def test_folder_prefix_and_block_range_spellings_live_in_artifacts_only():
    offenders = []
    for path in sorted((REPO / "src" / "sd3coreml").rglob("*.py")):
        if path.name == "artifacts.py" and path.parent.name == "pipeline":
            continue
        offenders += [f"{path.relative_to(REPO)}: {text!r}" for text in code_strings(path) if SPELLINGS.search(text)]
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        offenders += [f"{path.relative_to(REPO)}: {line.strip()}" for line in rule_code(path) if SPELLINGS.search(line)]
    assert offenders == []


def test_the_spelling_check_sees_a_literal_it_should_refuse(tmp_path):
    module = tmp_path / "module.py"
    module.write_text('"""coremlsd3_ in prose is fine."""\nNAME = f"blocks{start}-{end}"\nFOLDER = "coremlsd3_x"\n')
    found = sorted(text for text in code_strings(module) if SPELLINGS.search(text))
    assert found == ["coremlsd3_x", 'f"blocks{start}-{end}"']


def test_concrete_paths_are_the_rules_patterns_filled_in():
    config = {"output_root": "results/x", "conversion_target": "iOS18", "latent_size": [16, 16],
              "compiler": {"deployment_target": "18.2"},
              "compression": {"mmdit": {"mode": "linear_symmetric", "nbits": 8, "granularity": "per_channel"},
                              "text_encoders": {"mode": "palettize", "nbits": 6, "granularity": "per_tensor"}}}  # fmt: skip
    art = Artifacts.of(config)
    ranges = [BlockRange(0, 1, False), BlockRange(1, 3, True)]
    packages = art.folder_packages("4step", ranges)
    wildcards = {"model": "4step", "target": "iOS18", "height": 16, "width": 16}
    assert packages["MultiModalDiffusionTransformerStage2"] == fill(
        art.piece("block_range", "int8_linear_symmetric_per_channel"), start=1, end=3, head="_head", attention="",
        **wildcards,
    )
    assert packages["MultiModalDiffusionTransformerStage0"] == fill(
        art.piece("input_stage", "int8_linear_symmetric_per_channel"), **wildcards
    )
    assert packages["TextEncoder2"] == fill(art.piece("text_encoder", "palettize6_per_tensor"), encoder="TextEncoder2", target="iOS18")
    assert packages["VAEDecoder"] == fill(art.piece("vae_decoder", "fp16"), **wildcards)
    assert setting_of_package(packages["TextEncoder"]).precision == "palettized"
    for block_range in ranges:
        assert block_range_of(block_range_name(block_range)) == block_range
        assert block_range_name(block_range) == Path(fill(PIECES["block_range"], start=block_range.start,
                                                          end=block_range.end, head="_head" * block_range.has_head,
                                                          attention="")).name  # fmt: skip
    assert block_range_of("input") is None
    assert art.folder("4step", "packages") == f"results/x/{folder_name('4step', 'packages')}"
