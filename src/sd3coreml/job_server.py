"""A warm job server: `python -m sd3coreml STEP` without importing torch and its kin in every job.

A small job spends most of its time importing torch, transformers, scipy and sympy (3-5 s on
2 cores; a demo conversion works for under a second). This server imports them once, then
forks a child per job. `python -m sd3coreml` is the client (sd3coreml/__main__.py): when
SD3COREML_JOB_SERVER names the socket, it passes its argv, working directory, environment,
umask, sys.path and its stdin, stdout and stderr (SCM_RIGHTS) and exits as the child does;
it forwards SIGTERM, SIGINT and SIGHUP to the child, and a child whose client vanished kills
itself. With no server answering, or a request refused, the client runs the step itself.

Why a served job's outputs are the job's own, byte for byte:
- Nothing of sd3coreml is imported before the fork: the child imports the checkout's code
  fresh, so a test's module record (tests/job_hooks) lists what the step loaded, as in its
  own process.
- coremltools and diffusers are not preloaded: their import-time probes run in the child,
  where frameworks.py hides the frameworks the step names, preloaded ones included.
- A request is refused when its environment differs from the server's in what an interpreter
  fixes at start or import (PINNED_*; thread counts, hash seed, PYTHONPATH, test hooks) or in
  its interpreter, flags, sys.path or resource limits. Start the server in the jobs'
  environment: `--job-threads N` adds what Snakemake's shell gives a job of N threads.
- No tensor work before the fork, so torch's and OpenMP's thread pools start in the child.
  torch's and numpy's unseeded generators are reseeded per child (Python's `random` reseeds
  itself). The hash secret cannot be: every child has the server's (random, or
  PYTHONHASHSEED's as the server was started), where jobs of their own draw one each.

Not for measuring: Snakemake's `benchmark:` sees the client process, not the child, so a
served job's figures hold its wall time but not its CPU time or memory. `make bench` runs
without a server. A served job's process shows the server's command line (`ps`, psutil), and
import-time warnings of the preloaded modules go to the server's stderr, not the job's log.

    python -m sd3coreml.job_server --socket PATH [--job-threads N] [--log FILE]   # until SIGTERM
    python -m sd3coreml.job_server [--job-threads N] -- COMMAND...   # COMMAND with a server beside it
"""

import argparse
import atexit
import gc
import importlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types

SOCKET_VARIABLE = "SD3COREML_JOB_SERVER"
# Imported by the jobs that convert or check (measured with -X importtime on the demo's steps);
# none probes for frameworks at import time.
PRELOADED = (
    "numpy", "scipy.stats", "sympy", "torch", "torch._dynamo", "safetensors.torch", "PIL.Image", "jinja2", "requests",
    "transformers.modeling_utils", "transformers.models.clip.modeling_clip", "transformers.models.clip.tokenization_clip",
)  # fmt: skip
# Probes (frameworks.py) run in each job, and scikit-learn fails to import with torch hidden.
NEVER_PRELOADED = ("coremltools", "diffusers", "sklearn")
# Read at interpreter start, or by the preloaded modules and libraries as they load; a request must
# match the server. Not KMP_*: LLVM's and Intel's OpenMP read them at their first parallel region,
# in the child (and coremltools and scikit-learn set two when imported, in a test's pytest too).
PINNED_PREFIXES = ("PYTHON", "LD_", "DYLD_", "OMP_", "GOMP_", "MKL_", "OPENBLAS_", "GOTO_", "VECLIB_",
                   "NUMEXPR_", "TORCH", "PYTORCH", "CUDA", "HF_", "HUGGINGFACE", "TRANSFORMERS_", "TOKENIZERS_",
                   "FAKETIME", "DONT_FAKE", "MALLOC", "LC_", "XDG_", "SD3COREML_TEST_")  # fmt: skip
PINNED_NAMES = ("TMPDIR", "TMP", "TEMP", "TEMPDIR", "TZ", "LANG", "LANGUAGE", "HOME")
# Read at exit by the test hook that records a job's modules, so it may differ.
UNPINNED = ("SD3COREML_TEST_RECORD_MODULES",)
# What Snakemake's shell sets for a job of N threads (snakemake/shell.py), besides TMPDIR and kin.
SNAKEMAKE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")  # fmt: skip
REAP_INTERVAL_S = 0.02


def pinned(environ: dict) -> dict:
    def is_pinned(name):
        return name not in UNPINNED and (name in PINNED_NAMES or name.startswith(PINNED_PREFIXES))

    return {name: value for name, value in environ.items() if is_pinned(name)}


def interpreter() -> dict:
    """What the client compares too (sd3coreml/__main__.py sends the same fields)."""
    limits = {name: list(resource.getrlimit(getattr(resource, name))) for name in dir(resource) if "RLIMIT_" in name}
    options = {"flags": list(sys.flags), "xoptions": sys._xoptions, "warnoptions": sys.warnoptions}
    return {"executable": sys.executable, **options, "path": sys.path[1:], "limits": limits}


def refusal(request: dict, facts: dict, imported_env: dict) -> str | None:
    """Why this server cannot run `request` as its own process would, or None."""
    theirs, ours = pinned(request["env"]), pinned(facts["env"])

    def allowed(name):  # what the server started with, or what its preloads set (as in a client that imported them)
        return ours.get(name), imported_env.get(name, ours.get(name))

    differing = sorted(name for name in theirs.keys() | ours.keys() if theirs.get(name) not in allowed(name))
    if differing:
        return f"environment differs: {', '.join(differing)}"
    mismatched = [key for key in facts if key != "env" and request.get(key) != facts[key]]
    return f"interpreter differs: {', '.join(mismatched)}" if mismatched else None


def receive(connection: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, 4, 3)
    size, body = int.from_bytes(header.ljust(4, b"\0"), "big"), b""
    while len(body) < size:
        chunk = connection.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the client left mid-request")
        body += chunk
    return json.loads(body), fds


def send(connection: socket.socket, message: dict) -> None:
    try:
        connection.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the client is gone; its child sees that and ends itself


def become_job(request: dict, fds: list[int], connection: socket.socket, imported_env: dict) -> None:
    """In the forked child: take the client's process state, run the step, never return."""
    # A signal the client forwards before the step runs ends the job as it ends a Python starting up.
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    send(connection, {"pid": os.getpid()})  # before its exit, on the same stream: the client learns it first
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.umask(request["umask"])
    os.chdir(request["cwd"])
    os.environ.clear()  # through putenv/unsetenv: C code reading the environment sees the job's
    os.environ.update({**request["env"], **imported_env})
    sys.argv[:], sys.orig_argv[:], sys.path[:] = request["argv"], request["orig_argv"], request["sys_path"]
    for name in [name for name in sys.modules if name == "sd3coreml" or name.startswith("sd3coreml.")]:
        del sys.modules[name]
    # A stand-in for `python -m sd3coreml`'s __main__: nothing may re-run this server's.
    sys.modules["__main__"] = types.ModuleType("__main__")
    sys.modules["__main__"].__file__ = request["argv"][0]
    importlib.invalidate_caches()
    # Seeded afresh as in a new process (CPU only: other devices seed at their first use); Python's
    # `random` reseeds itself after a fork.
    sys.modules["torch"].default_generator.seed()
    sys.modules["numpy"].random.seed()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=die_with_client, args=(connection,), daemon=True).start()
    code, interrupted = run_step(request["argv"][1:])
    atexit._run_exitfuncs()  # as at a normal exit: the test hook's module record, logging's flush
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:  # Python ends an uncaught KeyboardInterrupt by SIGINT, so the shell sees one
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    send(connection, {"exit": code & 0xFF})  # as the system truncates it: sys.exit(-1) is 255, not a signal
    os._exit(code & 0xFF)


def die_with_client(connection: socket.socket) -> None:
    """The client never writes after its request: an end of file means it is gone (SIGKILL)."""
    try:
        while connection.recv(1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def run_step(argv: list[str]) -> tuple[int, bool]:
    """`raise SystemExit(main())` of sd3coreml/__main__.py, ended as Python ends it: (code, by SIGINT)."""
    try:
        from sd3coreml.commands.main import main

        code = main(argv)
    except SystemExit as ended:
        code = ended.code
    except KeyboardInterrupt:
        traceback.print_exc()
        return 1, True
    except BaseException:  # noqa: BLE001 (what Python does with any exception that ends a program)
        sys.excepthook(*sys.exc_info())
        return 1, False
    if code is None or isinstance(code, int):
        return code or 0, False
    print(code, file=sys.stderr)
    return 1, False


class Server:
    def __init__(self, path: str, log):
        # Taken before the preloads, which change both: torch._dynamo sets TORCHINDUCTOR_CACHE_DIR.
        self.facts = {**interpreter(), "env": dict(os.environ)}
        self.log = log
        for name in PRELOADED:
            importlib.import_module(name)
        # What those imports set in the environment they also set in a job's own process.
        self.imported_env = {name: value for name, value in os.environ.items() if self.facts["env"].get(name) != value}
        if leaked := [name for name in NEVER_PRELOADED if name in sys.modules]:
            raise SystemExit(f"error: preloading imported {', '.join(leaked)}, which each job must import itself")
        gc.freeze()  # children then copy fewer pages: the collector leaves the preloaded objects alone
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.children: dict[int, socket.socket] = {}

    def serve_forever(self) -> None:
        while True:
            ready, _, _ = select.select([self.listener], [], [], REAP_INTERVAL_S)
            if ready:
                connection, _ = self.listener.accept()
                self.answer(connection)
            self.reap()

    def answer(self, connection: socket.socket) -> None:
        connection.settimeout(10)  # a client sends its request at once; never hang the server on one
        try:
            request, fds = receive(connection)
        except (OSError, ValueError) as error:
            self.note(f"bad request: {error}")
            connection.close()
            return
        connection.settimeout(None)
        if reason := refusal(request, self.facts, self.imported_env):
            send(connection, {"refused": reason})
            self.note(f"refused {request['argv'][1:2]}: {reason}")
        elif (pid := os.fork()) == 0:
            try:
                # Logged by the child: the line is there before its client learns the job's end.
                self.note(f"served {request['argv'][1:2]} as {os.getpid()}")
                self.listener.close()
                for other in self.children.values():
                    other.close()
                become_job(request, fds, connection, self.imported_env)
            except BaseException:  # noqa: BLE001 (the job could not start: say why on its stderr)
                traceback.print_exc()
            finally:
                os._exit(1)  # never back into the server's loop
        else:
            self.children[pid] = connection
            connection = None
        for fd in fds:
            os.close(fd)
        if connection is not None:
            connection.close()

    def reap(self) -> None:
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            # The child reported a normal end itself; a signal's end only the parent sees.
            if connection := self.children.pop(pid, None):
                send(connection, {"exit": os.waitstatus_to_exitcode(status)})
                connection.close()

    def note(self, line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", file=self.log, flush=True)


def adopt_job_environment(threads: int) -> None:
    """Snakemake's shell gives each job these; set before numpy's and torch's libraries read them."""
    os.environ.update({name: str(threads) for name in SNAKEMAKE_THREAD_VARIABLES})
    os.environ.update({name: tempfile.gettempdir() for name in ("TMPDIR", "TMP", "TEMPDIR", "TEMP")})


def serve(path: str, log_path: str | None) -> None:
    # SIGTERM ends the server like Ctrl-C: the socket goes; running children finish and report.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        with open(log_path or os.devnull, "a") as log:
            Server(path, log).serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if os.path.exists(path):
            os.unlink(path)


def run_beside_server(command: list[str], threads: int | None) -> int:
    """COMMAND with SD3COREML_JOB_SERVER set and a server answering it, stopped after."""
    folder = tempfile.mkdtemp(prefix="sd3coreml-jobs-")
    path = os.path.join(folder, "socket")
    server_command = [sys.executable, "-m", "sd3coreml.job_server", "--socket", path]
    server_command += ["--job-threads", str(threads)] if threads else []
    server = subprocess.Popen(server_command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        return subprocess.run(command, env={**os.environ, SOCKET_VARIABLE: path}, check=False).returncode
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sd3coreml.job_server", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="the Unix socket to listen on (serve until SIGTERM)")
    parser.add_argument("--job-threads", type=int, help="take the environment Snakemake gives a job of N threads")
    parser.add_argument("--log", help="append a line per request here")
    parser.add_argument("command", nargs="*", help="after --: run it with a server beside it, then stop the server")
    args = parser.parse_args()
    if bool(args.socket) == bool(args.command):
        parser.error("give either --socket PATH or -- COMMAND")
    if args.command:
        return run_beside_server(args.command, args.job_threads)
    if args.job_threads:
        adopt_job_environment(args.job_threads)
    serve(args.socket, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
