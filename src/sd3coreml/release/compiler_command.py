"""The compiler's command template: its words, the program it names, and what a manifest records
of it (the command without host paths, the target, the compiler's and Xcode's versions).

Apart from compile.py, which runs the compiler, so that a folder's manifest can record the
compiler without the folder code importing the code that compiles.
"""

import shlex
from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.release.toolchain import compiler_versions


def _template_words(command_template: str) -> list[str]:
    try:
        words = shlex.split(command_template)
    except ValueError as error:
        raise PipelineError(f"compiler template {command_template!r}: {error}; fix its quoting") from None
    if not words:
        raise PipelineError("compiler template is empty; use the default or name a compiler program")
    return words


def _xcrun_tool(command_template: str) -> str | None:
    """The tool an `xcrun <tool> ...` template runs, or None for any other template."""
    words = _template_words(command_template)
    return words[1] if words[0] == "xcrun" and len(words) > 1 else None


def compiler_program(command_template: str) -> list[str]:
    """The words that name the compiler: `xcrun <tool>`, or a custom template's first word."""
    words = _template_words(command_template)
    return words[:2] if _xcrun_tool(command_template) is not None else words[:1]


def public_command(command_template: str) -> str:
    """The template as a manifest records it: program paths cut to their names (no host paths)."""
    words = _template_words(command_template)
    return shlex.join([Path(word).name if word.startswith("/") else word for word in words])


def compiler_record(command_template: str, deployment_target: str) -> dict:
    """What compiled an app folder, for its manifest: command, target, compiler and Xcode versions."""
    return {
        "command": public_command(command_template),
        "deployment_target": deployment_target,
        "versions": compiler_versions(compiler_program(command_template)),
    }
