"""Keep the libraries a step imports from importing frameworks the step does not use.

At import time coremltools imports torch, scikit-learn, scipy and transformers only to
learn whether they are installed: about 10 s of every job on a 2-core machine, more than
a small conversion itself. diffusers does the same for transformers (half a second to a
second and a half here). A step names the frameworks it does not use before importing the
library; they look absent while those probes run, and only then.

Hiding them for the whole process, as this module once did, broke any package that needs one
of them later: where `peft` is installed, diffusers imports it while loading a model class,
peft imports transformers, and every VAE job failed. Outside the probes an import works as
usual, at its usual cost.
"""

import sys

# The modules whose own import tries the frameworks and carries on without them. A module
# missing here (a newer diffusers that moved it) only costs that framework's import time.
PROBES = (
    # coremltools/_deps: try-imports torch, sklearn, transformers and more.
    "coremltools",
    # Records which frameworks exist (importlib.util.find_spec); diffusers' guarded imports
    # follow that record, so transformers recorded absent is never imported by them.
    "diffusers.utils.import_utils",
    # Imports transformers' quantization config if it can, whatever the record says.
    "diffusers.quantizers.pipe_quant_config",
)


class _WithoutFrameworks:
    """Loader that runs a probe's module with `names` absent from sys.modules, then puts them back."""

    def __init__(self, loader, names: tuple[str, ...]):
        self._loader = loader
        self._names = names

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Hidden even when imported already: in a child of the job server (job_server.py) torch and
        # transformers were imported before the step began, where a job of its own has not imported
        # them at the probe. sys.modules then looks as in that process: the name None, no submodules.
        # One hidden by an enclosing probe (None) stays so.
        hidden = [name for name in self._names if sys.modules.get(name, False) is not None]
        imported = {
            name: sys.modules.pop(name) for name in [name for name in sys.modules if name.split(".")[0] in hidden]
        }
        for name in hidden:
            sys.modules[name] = None
        try:
            self._loader.exec_module(module)
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
            sys.modules.update(imported)

    def __getattr__(self, attribute):
        # importlib.resources and tracebacks ask a module's loader for its files and source.
        return getattr(self._loader, attribute)


class _ProbeFinder:
    """Meta-path finder that gives each probe's first import the loader above."""

    def __init__(self, names: tuple[str, ...], pending: set[str]):
        self.names = names
        self.pending = pending

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _WithoutFrameworks(spec.loader, self.names)
        return spec


def skip_unused_frameworks(*names: str) -> None:
    """Make `names` (top-level modules such as "torch") look absent to the import-time probes of PROBES.

    Call it before the step imports its library. Nothing is imported here and nothing else is
    hidden; a probe that has already run is left as it is. A later call replaces the names.
    """
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _ProbeFinder)]
    pending = {probe for probe in PROBES if probe not in sys.modules}
    if pending:
        sys.meta_path.insert(0, _ProbeFinder(names, pending))
