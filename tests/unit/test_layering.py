"""The library's layers, read from the source with code_closure's import reader (nothing is imported).

Every import counts, module- or function-level: a function that imports across a layer drags
that layer into whatever job or Snakemake process calls it. A break is named `module -> imported`.
"""

from pathlib import Path

import pytest
from harness import REPO

from sd3coreml.pipeline.code_closure import PACKAGE, CodeBase

COMMANDS = f"{PACKAGE}.commands"
PIPELINE = f"{PACKAGE}.pipeline"
CONVERT = f"{PACKAGE}.convert"
VERIFY = f"{PACKAGE}.verify"
END_TO_END = f"{VERIFY}.end_to_end"
RELEASE = f"{PACKAGE}.release"
# What of release/ pipeline/ may use: torch-free modules Snakemake calls at parse time (the
# compiler's presence, the hand-off's folders and their manifests); the package itself is empty.
PIPELINE_RELEASE_MODULES = {
    RELEASE,
    f"{RELEASE}.compile",
    f"{RELEASE}.folder",
    f"{RELEASE}.folder_check",
    f"{RELEASE}.manifest",
}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def in_library(module: str) -> bool:
    # The entry points run the command line: `python -m sd3coreml`, and the job server's children.
    return not within(module, COMMANDS) and module not in {f"{PACKAGE}.__main__", f"{PACKAGE}.job_server"}


def pipeline_may_not_import(imported: str) -> bool:
    if within(imported, RELEASE):
        return imported not in PIPELINE_RELEASE_MODULES
    return within(imported, CONVERT) or within(imported, VERIFY)


# rule -> (who is bound by it, what they may not import)
RULES = {
    "the library never imports the command line": (in_library, lambda imported: within(imported, COMMANDS)),
    "pipeline/ imports no conversion, no verification and only release/'s parse-time modules": (
        lambda module: within(module, PIPELINE),
        pipeline_may_not_import,
    ),
    "verify/ outside end_to_end/ never imports end_to_end/": (
        lambda module: within(module, VERIFY) and not within(module, END_TO_END),
        lambda imported: within(imported, END_TO_END),
    ),
}


def modules(src: Path) -> list[str]:
    """Every module of the package under `src`, a package by its own name."""
    names = []
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def breaks(src: Path, rule: str) -> list[str]:
    """Each import under `src` that breaks `rule`, as `module -> imported`."""
    bound, forbidden = RULES[rule]
    code = CodeBase(src)
    return [
        f"{module} -> {imported}"
        for module in modules(src)
        if bound(module)
        for imported in sorted(code.imported(code.tree(module)))
        if forbidden(imported)
    ]


@pytest.mark.parametrize("rule", RULES)
def test_no_import_breaks_a_layer(rule):
    assert breaks(REPO / "src", rule) == []


def test_an_import_across_a_layer_is_named(tmp_path):
    """The rules are only as good as what they see: a small tree with one break of each, in functions too."""
    files = {
        "__init__.py": "",
        "errors.py": "def hint():\n    from sd3coreml.commands import main\n",
        "commands/__init__.py": "",
        "commands/main.py": "from sd3coreml.convert import mmdit\n",
        "convert/__init__.py": "",
        "convert/mmdit.py": "",
        "pipeline/__init__.py": "",
        "pipeline/stages.py": "from sd3coreml.convert.mmdit import x\nfrom sd3coreml.release import folder_check\n",
        "pipeline/disk.py": "def check():\n    from sd3coreml.release.cleanup import clean\n",
        "release/__init__.py": "",
        "release/cleanup.py": "",
        "release/folder_check.py": "",
        "verify/__init__.py": "",
        "verify/measure.py": "import sd3coreml.verify.end_to_end.check\n",
        "verify/end_to_end/__init__.py": "",
        "verify/end_to_end/check.py": "from sd3coreml.verify import measure\n",
    }
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert {rule: breaks(tmp_path, rule) for rule in RULES} == {
        "the library never imports the command line": [
            "sd3coreml.errors -> sd3coreml.commands",
            "sd3coreml.errors -> sd3coreml.commands.main",
        ],
        "pipeline/ imports no conversion, no verification and only release/'s parse-time modules": [
            "sd3coreml.pipeline.disk -> sd3coreml.release.cleanup",
            "sd3coreml.pipeline.stages -> sd3coreml.convert.mmdit",
        ],
        "verify/ outside end_to_end/ never imports end_to_end/": [
            "sd3coreml.verify.measure -> sd3coreml.verify.end_to_end.check"
        ],
    }
