"""The code a job runs, named by its content: the static import closure of its step.

`python -m sd3coreml STEP` loads the command layer (`sd3coreml.__main__`, `commands.main` and
their module-level imports), then STEP's command group (`commands/<group>.py`, by the
`GROUPS` table of `commands.main`) with its module-level imports, then runs STEP's function,
which imports the library code it needs inside. A step's closure is all of that, followed
through every import of this package, module- and function-level, read with `ast` (nothing
is imported). Its fingerprint, a sha256 over the closure's module names and file contents,
goes into the params of each rule running STEP: an edit to a module any job could load reruns
that job, and no other. Nothing of this reaches a folder's manifest, so moving code leaves
folder bytes alone. The files are read from the checkout the Snakefile belongs to.
"""

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "sd3coreml"
MAIN = f"{PACKAGE}.commands.main"
COMMAND_LAYER = (f"{PACKAGE}.__main__", MAIN)
# commands/main.py's command group -> steps table (names as strings, so ast reads it).
GROUPS_NAME = "GROUPS"
# The function of each command group that adds its steps to the parser.
REGISTER = "register_cli"


class CodeBase:
    """The modules of one checkout's `src/sd3coreml`, and what each step of its CLI runs."""

    def __init__(self, src: Path):
        self.src = Path(src)

    def path(self, module: str) -> Path | None:
        relative = Path(*module.split("."))
        for candidate in (self.src / relative.with_suffix(".py"), self.src / relative / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    @cache
    def tree(self, module: str) -> ast.Module:
        return ast.parse(self.path(module).read_text(encoding="utf-8"), filename=str(self.path(module)))

    def imported(self, node: ast.AST) -> set[str]:
        """This package's modules that `node` imports, wherever in it the import stands."""
        found = set()
        for statement in ast.walk(node):
            if isinstance(statement, ast.Import):
                found |= {alias.name for alias in statement.names}
            elif isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
                found.add(statement.module)
                found |= {f"{statement.module}.{alias.name}" for alias in statement.names}
        return {name for name in found if name.split(".")[0] == PACKAGE and self.path(name)}

    @cache
    def module_imports(self, module: str) -> frozenset[str]:
        """What `module` imports anywhere in it, function bodies included; read once per module."""
        return frozenset(self.imported(self.tree(module)))

    @cache
    def module_level_imports(self, module: str) -> frozenset[str]:
        """What importing `module` runs: imports outside function bodies."""
        found = set()
        pending = list(self.tree(module).body)
        while pending:
            node = pending.pop()
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                found |= self.imported(node)
            pending.extend(ast.iter_child_nodes(node))
        return frozenset(found)

    def closure(self, modules: set[str], module_level_only: bool = False) -> set[str]:
        """`modules`, their parent packages, and every module of this package they import, transitively."""
        seen, pending = set(), list(modules)
        while pending:
            module = pending.pop()
            if module in seen:
                continue
            seen.add(module)
            parents = {".".join(module.split(".")[:depth]) for depth in range(1, module.count(".") + 1)}
            imports = self.module_level_imports(module) if module_level_only else self.module_imports(module)
            pending.extend((imports | parents) - seen)
        return seen

    @cache
    def command_layer(self) -> frozenset[str]:
        """What every `python -m sd3coreml STEP` loads before it runs STEP."""
        return frozenset(self.closure(set(COMMAND_LAYER), module_level_only=True))

    @cache
    def step_modules(self) -> dict[str, str]:
        """step -> its command group's module, from commands.main's GROUPS."""
        for node in self.tree(MAIN).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == GROUPS_NAME for t in node.targets):
                groups = ast.literal_eval(node.value)
                return {step: module for module, steps in groups.items() for step in steps}
        raise LookupError(f"{self.path(MAIN)}: no {GROUPS_NAME} table")

    @cache
    def step_code(self, step: str) -> frozenset[str]:
        """The modules a job of `step` can load: the command layer, its group, what its function imports."""
        module, function = self.step_entry(step)
        body = next(node for node in ast.walk(self.tree(module)) if getattr(node, "name", None) == function)
        group = self.closure({module}, module_level_only=True) | self.closure(self.registration_imports(module))
        return frozenset(self.closure(self.imported(body)) | group | self.command_layer())

    def registration_imports(self, module: str) -> set[str]:
        """What the group's `register_cli` imports: building the parser runs it in every step of the group."""
        register = next((node for node in self.tree(module).body
                         if isinstance(node, ast.FunctionDef) and node.name == REGISTER), None)  # fmt: skip
        return self.imported(register) if register else set()

    def step_entry(self, step: str) -> tuple[str, str]:
        """(group module, function) running `step`: the set_defaults(func=...) after add_parser(step)."""
        module = self.step_modules().get(step)
        if module is not None:
            for node in ast.walk(self.tree(module)):
                if isinstance(node, ast.FunctionDef) and (function := self.registered_function(node, step)):
                    return module, function
        raise LookupError(f"no 'python -m {PACKAGE} {step}': {self.path(MAIN)} does not register it")

    @staticmethod
    def registered_function(register: ast.FunctionDef, step: str) -> str | None:
        """The func= of the set_defaults that follows `add_parser(step)` in `register`, if any."""
        registering = False
        for node in ast.walk(register):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr == "add_parser":
                registering = bool(node.args) and getattr(node.args[0], "value", None) == step
            elif node.func.attr == "set_defaults" and registering:
                func = next((keyword.value for keyword in node.keywords if keyword.arg == "func"), None)
                return func.id if isinstance(func, ast.Name) else "<lambda>"
        return None

    def fingerprint(self, step: str) -> str:
        digest = hashlib.sha256()
        for module in sorted(self.step_code(step)):
            digest.update(f"{module}\n".encode())
            digest.update(hashlib.sha256(self.path(module).read_bytes()).digest())
        return digest.hexdigest()[:16]
