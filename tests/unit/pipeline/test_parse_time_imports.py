"""What the Snakefile and rules/*.smk import from sd3coreml at parse time must stay free of the heavy frameworks.

Snakemake runs those imports for every command (a dry run, --lint, each cluster job's own
Snakemake, the Mac hand-off): a module that imports torch at module level costs seconds each
time. The modules are read from the rule files themselves, so a new import in a rule file is
guarded as soon as it is written.
"""

import ast
import json
import re
import subprocess
import sys

from harness import REPO

from sd3coreml.pipeline.code_closure import CodeBase

HEAVY = ("torch", "coremltools", "diffusers", "transformers")
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
# One import statement of the package, at any indentation, a parenthesised name list included.
PACKAGE_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+sd3coreml(?:\.\w+)*[ \t]+import[ \t]+(?:\([^)]*\)|.*)|import[ \t]+sd3coreml\b.*)$",
    re.MULTILINE,
)


def imported_modules(text: str) -> set[str]:
    """The sd3coreml modules a rule file's import statements load (`from package import module` counts the module)."""
    code = CodeBase(REPO / "src")
    return {name for match in PACKAGE_IMPORT.finditer(text) for name in code.imported(ast.parse(match[0].strip()))}


PARSE_TIME = sorted(set().union(*(imported_modules(path.read_text()) for path in RULE_FILES)))


def frameworks_loaded_by(modules: list[str]) -> dict[str, list[str]]:
    """{module: the heavy frameworks its import loaded}, importing `modules` in turn in a fresh interpreter."""
    program = "import importlib, json, sys\nfound = {}\n"
    program += f"for name in {modules!r}:\n"
    program += "    before = {loaded.split('.')[0] for loaded in sys.modules}\n"
    program += "    importlib.import_module(name)\n"
    program += f"    added = ({{loaded.split('.')[0] for loaded in sys.modules}} - before) & {set(HEAVY)!r}\n"
    program += "    if added: found[name] = sorted(added)\n"
    program += "print(json.dumps(found))"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def test_the_reader_takes_every_form_of_import_a_rule_file_writes():
    text = (
        "from sd3coreml.pipeline import code_closure\n"
        "from sd3coreml.errors import (\n    PipelineError,\n)\n"
        "import sd3coreml.checksums\n"
        "def get_spec(wildcards):\n    from sd3coreml.release.compile import require_compiler\n"
        "from snakemake.utils import validate\n"
    )
    assert imported_modules(text) == {
        "sd3coreml.pipeline",
        "sd3coreml.pipeline.code_closure",
        "sd3coreml.errors",
        "sd3coreml.checksums",
        "sd3coreml.release.compile",
    }


def test_the_rule_files_import_from_the_library():
    # Both entry files import it: the build (common.smk) and the Mac hand-off (handoff.smk).
    for name in ("common.smk", "handoff.smk"):
        assert imported_modules((REPO / "rules" / name).read_text())
    assert len({module.split(".")[1] for module in PARSE_TIME}) > 1


def test_importing_what_the_rule_files_import_pulls_in_no_framework():
    assert frameworks_loaded_by(PARSE_TIME) == {}


def test_the_probe_sees_a_framework_when_one_is_imported():
    # The check above is only as good as its probe: a module that does import torch shows it.
    assert "torch" in frameworks_loaded_by(["sd3coreml.convert.conversion"])["sd3coreml.convert.conversion"]
