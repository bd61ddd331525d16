"""A real single-node SLURM cluster on this machine, for the tests (and for trying it by hand).

Needs root on Debian/Ubuntu: installs ``slurm-wlm`` and ``munge`` with apt-get when ``slurmctld``
is missing, writes a ``slurm.conf`` for this host (``nproc`` CPUs, most of the memory) into a
work folder, starts its own ``munged`` (private socket), ``slurmctld`` and ``slurmd`` in the
foreground as child processes, and waits until the node is idle. :meth:`LocalSlurm.stop` stops
exactly those processes. Clients find the cluster through ``SLURM_CONF``.

By hand (as root)::

    python tests/pipeline/slurm_local.py /tmp/slurm     # prints SLURM_CONF=..., Ctrl-C stops
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
PARTITION = "debug"


def unavailable() -> str | None:
    """Why a local SLURM cannot be started here (None if it can be tried)."""
    if sys.platform != "linux":
        return "SLURM tests need Linux"
    if os.geteuid() != 0:
        return "SLURM tests need root (they install slurm-wlm and start slurmctld/slurmd)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "slurmctld is not installed and there is no apt-get to install it"
    return None


def install() -> None:
    """``apt-get install slurm-wlm munge`` if ``slurmctld`` is missing (``apt-get update`` first
    when the package lists do not know them). Raises RuntimeError with apt's last line."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q",
           "--no-install-recommends", *PACKAGES]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"], env=env,
                       capture_output=True)  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not shutil.which("slurmctld"):
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed: {last[0]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        total_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return int(total_kb / 1024 * 0.8)


def slurm_conf(work: Path, host: str, cpus: int, memory_mb: int, munge_socket: Path) -> str:
    """The text of a single-node ``slurm.conf`` (root runs everything; no cgroups, no accounting)."""
    return f"""\
ClusterName=myocomp-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.pid
SlurmctldLogFile={work}/slurmctld.log
SlurmdLogFile={work}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class LocalSlurm:
    """A running single-node cluster: its work folder, ``slurm.conf`` and the daemons started."""

    work: Path
    conf: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()

    def jobs(self) -> list[str]:
        """Ids of the jobs in the queue (pending or running)."""
        return self.run("squeue", "-h", "-o", "%i").split()

    def stop(self) -> None:
        """Cancel remaining jobs, then stop exactly the daemons this object started."""
        if self.processes and self.processes[-1].poll() is None:
            self.run("scancel", "--full", "-u", "root", check=False)
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


def _log_tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-3:])
    except OSError:
        return "(no log)"


def start(work: str | Path, timeout: float = 120.0) -> LocalSlurm:
    """Install if needed, configure and start munged, slurmctld and slurmd; wait for an idle node.

    Raises RuntimeError (with the daemons' last log lines) if the node does not come up; then
    nothing started is left running.
    """
    install()
    work = Path(work).resolve()
    for sub in ("state", "spool", "munge"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(work / "munge", 0o700)
    host = socket.gethostname().split(".")[0]
    sock = work / "munge" / "munge.sock"
    conf = work / "slurm.conf"
    conf.write_text(slurm_conf(work, host, os.cpu_count() or 1, _memory_mb(), sock))
    cluster = LocalSlurm(work=work, conf=conf)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        cluster.processes.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={sock}",
             f"--pid-file={work}/munge/munged.pid", f"--log-file={work}/munge/munged.log",
             f"--seed-file={work}/munge/munged.seed"], **quiet))  # fmt: skip
        _wait(lambda: sock.exists(), 30, "munged did not start: " + _log_tail(work / "munge" / "munged.log"))
        cluster.processes.append(subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", str(conf)], env=cluster.env, **quiet))  # fmt: skip
        cluster.processes.append(subprocess.Popen(
            ["slurmd", "-D", "-f", str(conf)], env=cluster.env, **quiet))  # fmt: skip
        _wait(lambda: cluster.node_state() == "idle", timeout,
              f"the node did not become idle (state {cluster.node_state()!r}; slurmctld: "
              f"{_log_tail(work / 'slurmctld.log')}; slurmd: {_log_tail(work / 'slurmd.log')})")  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait(ready, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.5)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/myocomp-slurm")
    reason = unavailable()
    if reason:
        sys.exit(reason)
    running = start(folder)
    print(f"SLURM_CONF={running.conf}  (partition {PARTITION}); Ctrl-C stops the cluster")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
