"""The served job's client (`python -m sd3coreml` with SD3COREML_JOB_SERVER set) against a stand-in
server run by the test, so the order of events is the test's: a signal that reaches the client
before the child's pid is held and passed on once the pid comes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

SIGNALS = [signal.SIGTERM, signal.SIGINT]
# The served child's stand-in. A background shell's children start with SIGINT ignored (make
# under `sh -c '...' &`), which Python keeps: it takes Python's own handler back first.
SLEEPER = (
    "import signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "print('ready', flush=True); time.sleep(60)"
)


def request_of(connection: socket.socket) -> dict:
    """The client's request: a 4-byte length with its standard streams attached, then the JSON."""
    header, fds, _, _ = socket.recv_fds(connection, 4, 3)
    for fd in fds:
        os.close(fd)
    size, body = int.from_bytes(header, "big"), b""
    while len(body) < size:
        body += connection.recv(size - len(body))
    return json.loads(body)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_before_the_childs_pid_is_passed_on_when_the_pid_comes(tmp_path, signum):
    path = str(tmp_path / "server.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    child = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    env = {**os.environ, "SD3COREML_JOB_SERVER": path}
    client = subprocess.Popen([sys.executable, "-m", "sd3coreml", "no-such-step"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        connection, _ = server.accept()
        assert request_of(connection)["argv"][1:] == ["no-such-step"]
        client.send_signal(signum)  # the client has asked, and knows no child yet
        time.sleep(0.3)
        assert client.poll() is None and child.poll() is None  # held, not acted on
        connection.sendall(json.dumps({"pid": child.pid}).encode() + b"\n")
        assert child.wait(timeout=10) == -signum
        connection.sendall(json.dumps({"exit": -signum}).encode() + b"\n")
        assert client.wait(timeout=10) == -signum
    finally:
        for process in (client, child):
            process.kill()
            process.wait()
        server.close()
