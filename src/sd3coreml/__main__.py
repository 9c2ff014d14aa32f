"""`python -m sd3coreml STEP ...`: run STEP, or hand it to the warm job server SD3COREML_JOB_SERVER names.

The hand-over imports only the standard library (sd3coreml/job_server.py has the server and
what a served job shares with it). With no server answering, or the request refused (an
environment the server cannot serve as the job's own process), the step runs here.
"""

import os
import signal
import sys


def served_exit_code(path: str) -> int | None:
    """The exit code of the step as the server's child (negative: its signal), or None if not served."""
    import json
    import resource
    import socket

    # What the child takes on, then the fields job_server.interpreter() compares.
    umask = os.umask(0)
    os.umask(umask)
    limits = {name: list(resource.getrlimit(getattr(resource, name))) for name in dir(resource) if "RLIMIT_" in name}
    request = {"argv": sys.argv, "orig_argv": sys.orig_argv, "cwd": os.getcwd(), "env": dict(os.environ),
               "umask": umask, "sys_path": sys.path, "executable": sys.executable, "flags": list(sys.flags),
               "xoptions": sys._xoptions, "warnoptions": sys.warnoptions, "path": sys.path[1:], "limits": limits}  # fmt: skip
    body = json.dumps(request).encode()
    # Snakemake cancels a job by signalling its shell's process group: the signal goes on to the
    # child, and one that comes before the child's pid is held until the pid does.
    relay = Relay()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
        socket.send_fds(client, [len(body).to_bytes(4, "big")], [0, 1, 2])
        client.sendall(body)
    except OSError:  # no server there, or a standard stream closed: nothing to hand over
        return relay.give_back()
    for line in client.makefile("r"):
        reply = json.loads(line)
        if "refused" in reply:
            return relay.give_back()
        if "pid" in reply:
            relay.to(reply["pid"])
        if "exit" in reply:
            return reply["exit"]
    print(f"error: the job server at {path} ended before job {relay.child} reported its end", file=sys.stderr)
    return 1


class Relay:
    """Passes SIGTERM, SIGINT and SIGHUP on to the served child once its pid is known."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self):
        self.child, self.pending = None, []
        self.previous = {signum: signal.signal(signum, self.received) for signum in self.SIGNALS}

    def received(self, signum, frame) -> None:
        if self.child is None:
            self.pending.append(signum)
        else:
            forward(signum, self.child)

    def to(self, child: int) -> None:
        self.child = child
        for signum in self.pending:
            forward(signum, child)

    def give_back(self) -> None:
        """Not served: the step runs here, under Python's own handlers, and a held signal arrives now."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        for signum in self.pending:
            os.kill(os.getpid(), signum)


def forward(signum: int, pid: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # the child has ended; its end is on the way


def exit_as(code: int) -> None:
    """Leave as the served child did; nothing else to clean up (the job's own exit ran in the child)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)


if (server := os.environ.get("SD3COREML_JOB_SERVER")) and (code := served_exit_code(server)) is not None:
    exit_as(code)

from sd3coreml.commands.main import main  # after the hand-over, which needs none of it

raise SystemExit(main())
