"""A one-node Slurm cluster with accounting, in a folder of its own, for `make test-slurm`.

`one_node_slurm(root)` starts MariaDB, munged, slurmdbd, slurmctld and slurmd as children of
this process (Linux, as root), each with its config, pid, state, spool, log, socket and port
under `root`; it yields the environment their clients need (SLURM_CONF) and stops every
daemon it started by its process id on the way out, also when the body raises. Nothing is
written to /etc/slurm, /etc/munge or the system's MariaDB.

Accounting is on because snakemake-executor-plugin-slurm 1.3.6 polls job states with `sacct`
and validates the account with `sshare`/`sacctmgr`: without slurmdbd it never sees a job end.
Run it by hand for a cluster to try things on: `python tests/cluster/one_node_slurm.py`
(Ctrl-C or SIGTERM stops it).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CLUSTER, ACCOUNT, PARTITION = "sd3test", "sd3demo", "debug"
# What this needs from Debian's packages (bookworm: Slurm 22.05, MariaDB 10.11); `make slurm-packages` installs them.
COMMANDS = ["mariadb-install-db", "mariadbd", "mariadb", "mungekey", "munged", "slurmdbd", "slurmctld", "slurmd",
            "sacctmgr", "sinfo", "squeue", "scancel", "sbatch", "sacct"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*command: str, env=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if check and result.returncode:
        output = result.stderr.strip() or result.stdout
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {output}")
    return result


def wait_for(what: str, ready, timeout=60.0, logs=()):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {log}:\n{log.read_text()[-2000:]}" for log in logs if log.exists())
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s{tails}")
        time.sleep(0.5)


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


class Daemons:
    """The processes this cluster started; `stop()` ends each by its pid, newest first."""

    def __init__(self, logs: Path):
        self.logs, self.started = logs, []

    def start(self, name: str, *command: str, env=None) -> subprocess.Popen:
        out = open(self.logs / f"{name}.out", "w")  # noqa: SIM115 (the daemon keeps it)
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started.append((name, process))
        time.sleep(0.2)
        if process.poll() is not None:
            output = (self.logs / f"{name}.out").read_text()
            raise RuntimeError(f"{name} exited at once ({process.returncode}): {output}")
        return process

    def stop(self):
        for _name, process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.started.clear()


def slurm_conf(root: Path, ports: dict, node_line: str, munge_socket: Path) -> str:
    host = socket.gethostname().split(".")[0]
    return f"""\
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["slurmctld"]}
SlurmdPort={ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# No cgroups: a container may not delegate them, and one node needs no job containment.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["slurmdbd"]}
# For slurmdbd connections Slurm's clients take the munge socket from here, not from AuthInfo.
AccountingStoragePass={munge_socket}
AccountingStorageEnforce=associations
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def slurmdbd_conf(root: Path, ports: dict, munge_socket: Path, password: str) -> str:
    return f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["slurmdbd"]}
SlurmUser=root
PidFile={root}/run/slurmdbd.pid
LogFile={root}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser=slurm
StoragePass={password}
StorageLoc=slurm_acct_db
"""


@contextlib.contextmanager
def one_node_slurm(root: Path):
    """Start the cluster under `root` (an empty folder with a short path: sockets live there); yield its env."""
    missing = [name for name in COMMANDS if not shutil.which(name, path=f"{os.environ['PATH']}:/usr/sbin:/sbin")]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)} (Debian's Slurm, munge, MariaDB): make slurm-packages")
    for sub in ("state", "spool", "run", "log", "munge", "db"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # the munge key and slurmdbd's database password are root's alone
    ports = {name: free_port() for name in ("mariadb", "slurmdbd", "slurmctld", "slurmd")}
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "PATH": f"{os.environ['PATH']}:/usr/sbin:/sbin"}
    daemons = Daemons(root / "log")
    try:
        # MariaDB: its own datadir, socket and port on 127.0.0.1; a `slurm` user for slurmdbd.
        db_socket, password = root / "db" / "mariadb.sock", os.urandom(8).hex()
        run("mariadb-install-db", "--no-defaults", f"--datadir={root}/db/data", "--user=root",
            "--auth-root-authentication-method=socket", "--skip-test-db", env=env)  # fmt: skip
        daemons.start("mariadbd", "mariadbd", "--no-defaults", f"--datadir={root}/db/data", f"--socket={db_socket}",
                      f"--port={ports['mariadb']}", "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
                      f"--pid-file={root}/run/mariadbd.pid", f"--log-error={root}/log/mariadbd.log",
                      "--innodb-buffer-pool-size=64M", "--innodb-lock-wait-timeout=900", env=env)  # fmt: skip
        wait_for("mariadbd", lambda: listening(ports["mariadb"]), logs=[root / "log" / "mariadbd.log"])
        sql = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")  # fmt: skip
        run("mariadb", "--no-defaults", f"--socket={db_socket}", "-uroot", "-e", sql, env=env)

        # munge: its own key and socket; Slurm's daemons and clients find it through AuthInfo.
        # --force: munged refuses a socket other users cannot reach; every client here is root.
        munge_socket = root / "munge" / "munge.socket"
        run("mungekey", "--create", f"--keyfile={root}/munge/munge.key", env=env)
        daemons.start("munged", "munged", "--foreground", "--force", f"--socket={munge_socket}",
                      f"--key-file={root}/munge/munge.key", f"--pid-file={root}/run/munged.pid",
                      f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/munged.seed",
                      env=env)  # fmt: skip
        wait_for("munged", munge_socket.exists, logs=[root / "log" / "munged.log"])

        # slurm.conf from what slurmd sees of this machine (CPUs, RealMemory), so the node is not drained.
        node_line = run("slurmd", "-C", env=env).stdout.splitlines()[0]
        (root / "slurm.conf").write_text(slurm_conf(root, ports, node_line, munge_socket))
        (root / "slurmdbd.conf").write_text(slurmdbd_conf(root, ports, munge_socket, password))
        (root / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a config others can read (it holds the password)

        daemons.start("slurmdbd", "slurmdbd", "-D", env=env)  # finds slurmdbd.conf beside SLURM_CONF
        wait_for("slurmdbd", lambda: listening(ports["slurmdbd"]), logs=[root / "log" / "slurmdbd.log"])
        run("sacctmgr", "-i", "add", "cluster", CLUSTER, env=env)
        daemons.start("slurmctld", "slurmctld", "-D", "-f", str(root / "slurm.conf"), env=env)
        daemons.start("slurmd", "slurmd", "-D", "-f", str(root / "slurm.conf"), env=env)
        user = os.environ.get("USER") or run("id", "-un").stdout.strip()
        run("sacctmgr", "-i", "add", "account", ACCOUNT, f"Cluster={CLUSTER}", "Description=sd3-coreml tests", env=env)
        run("sacctmgr", "-i", "add", "user", user, f"Account={ACCOUNT}", f"Cluster={CLUSTER}", env=env)
        logs = [root / "log" / "slurmctld.log", root / "log" / "slurmd.log"]
        wait_for("the node", lambda: run("sinfo", "-h", "-o", "%T", env=env, check=False).stdout.strip() == "idle",
                 logs=logs)  # fmt: skip
        yield env
    finally:
        cancel_jobs(daemons, env)
        daemons.stop()


def cancel_jobs(daemons: Daemons, env: dict):
    """A run that failed may leave jobs running: their slurmstepd outlives slurmd, so cancel them first."""
    if "slurmd" not in {name for name, process in daemons.started if process.poll() is None}:
        return
    run("scancel", "--full", f"--user={os.getuid()}", env=env, check=False)
    with contextlib.suppress(RuntimeError):
        wait_for("no jobs", lambda: not run("squeue", "-h", env=env, check=False).stdout.strip(), timeout=30)


def _stop(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    import tempfile

    # SIGTERM too, and SIGINT again: a shell starting this in the background ignores SIGINT for it.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    cluster_root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    try:
        with one_node_slurm(cluster_root) as cluster_env, contextlib.suppress(KeyboardInterrupt):
            print(f"export SLURM_CONF={cluster_env['SLURM_CONF']}  # Ctrl-C or kill {os.getpid()} stops it", flush=True)
            signal.pause()
    finally:
        shutil.rmtree(cluster_root, ignore_errors=True)
