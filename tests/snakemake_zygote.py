"""A warm Snakemake for the test session's dry runs (tests/harness.py's SnakemakeZygote).

A Snakemake run spends over a second importing Snakemake and collecting its plugins before it
reads the Snakefile. This process does both once, then forks a child per request (one JSON line
on stdin: the run's arguments, environment, folder and output files) that runs Snakemake's own
`main` as `python -m snakemake` would, and answers one JSON line with the child's exit code. It
imports nothing of the project: each child reads the Snakefile and the library afresh.
"""

import atexit
import json
import os
import sys

import snakemake.cli

snakemake.cli.get_argument_parser()  # the plugin registries collect once, here


def run_snakemake(request: dict) -> int:
    """In the forked child: Snakemake's `main` with the request's folder, environment and files."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):  # fmt: skip
        handle = os.open(path, flags, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = [os.path.join(os.path.dirname(snakemake.cli.__file__), "__main__.py"), *request["args"]]
    try:
        snakemake.cli.main(request["args"])
    except SystemExit as exit:  # main() ends in one, having printed any exception
        return exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    return 0


def serve(request: dict) -> int:
    child = os.fork()
    if child == 0:
        code = 1
        try:
            code = run_snakemake(request)
        finally:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def main() -> None:
    for line in sys.stdin:
        print(json.dumps({"returncode": serve(json.loads(line))}), flush=True)


if __name__ == "__main__":
    main()
