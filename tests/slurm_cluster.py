"""A throw-away two-node SLURM cluster on one host, for tests and CI.

Debian's ``slurm-wlm`` (22.05): one ``slurmctld`` and two ``slurmd`` daemons
(``slurmd -N n1`` / ``slurmd -N n2``) on 127.0.0.1, ``AuthType=auth/none`` (no munge),
config rendered from ``tests/slurm/slurm.conf.template`` into a temp dir that also
holds every state/spool/pid/log file. Every SLURM command is pointed at it through
``SLURM_CONF`` (see :meth:`LocalSlurmCluster.env`), never through /etc/slurm.

Usage::

    cluster = LocalSlurmCluster()
    cluster.start()                         # waits until both nodes are idle
    job = cluster.sbatch("slurm/train_multinode.sh", ["--nodes=2"], env={"X": "1"})
    info = cluster.wait(job, timeout=120)   # {"JobState": "COMPLETED", "ExitCode": "0:0", ...}
    cluster.stop()

Runs as root (slurmd launches the jobs). Ports default to 6817 (slurmctld),
6818/6819 (slurmd n1/n2); if one of them is taken, free ports are picked instead
(or, with ``strict_ports=True``, a clear error names the busy port).
"""

from __future__ import annotations

import getpass
import os
import random
import shutil
import signal as _signal
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "slurm" / "slurm.conf.template"
DEFAULT_PORTS = (6817, 6818, 6819)  # slurmctld, slurmd n1, slurmd n2
NODES = ("n1", "n2")

# JobState values after which a job will not run again by itself.
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REQUEUE_HOLD",
}


class SlurmClusterError(RuntimeError):
    pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as slurm does
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now, drawn below the kernel's ephemeral range: a port the kernel
    hands out (bind to 0) can be handed out again to an outgoing connection (slurmd's, srun's)
    before the job listens on it, which fails the rendezvous with EADDRINUSE."""
    low, ports = _ephemeral_low(), []
    rng = random.Random()
    while len(ports) < n:
        port = rng.randrange(20000, max(low, 20001))
        if port not in ports and _port_free(port):
            ports.append(port)
    return ports


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(lines[-n:])


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job -o`` output (one line of Key=Value) to a dict."""
    out: dict[str, str] = {}
    key = None
    for tok in text.strip().split(" "):
        if "=" in tok:
            key, _, val = tok.partition("=")
            out[key] = val
        elif key is not None and tok:  # values with spaces (rare: Command, Reason)
            out[key] += " " + tok
    return out


class LocalSlurmCluster:
    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        ports: tuple[int, int, int] | None = None,
        strict_ports: bool = False,
        cpus: int = 2,
        real_memory_mb: int = 2048,
        kill_wait: int = 2,
    ) -> None:
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="elastic-pl-slurm-"))
        self.requested_ports = ports
        self.strict_ports = strict_ports or ports is not None
        self.ports: tuple[int, int, int] = ports or DEFAULT_PORTS
        self.cpus = cpus
        self.real_memory_mb = real_memory_mb
        self.kill_wait = kill_wait
        self.user = getpass.getuser()
        self.conf = self.root / "slurm.conf"
        self.started = False

    # ------------------------------------------------------------------ setup
    @staticmethod
    def missing_binaries() -> list[str]:
        need = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun"]
        extra_path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
        return [b for b in need if shutil.which(b, path=extra_path) is None]

    def _pick_ports(self) -> None:
        busy = [p for p in self.ports if not _port_free(p)]
        if not busy:
            return
        if self.strict_ports:
            raise SlurmClusterError(
                f"port(s) {busy} already in use (another slurmctld/slurmd or a running test cluster?); "
                f"see `ss -ltnp | grep -E '{'|'.join(map(str, busy))}'`"
            )
        self.ports = tuple(_free_ports(3))  # type: ignore[assignment]
        print(f"[slurm-cluster] default ports {DEFAULT_PORTS} busy ({busy}): using {self.ports}")

    def render_conf(self) -> Path:
        for sub in ("state", "spool", "run", "log", "jobs", *[f"spool/{n}" for n in NODES]):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        text = string.Template(TEMPLATE.read_text()).substitute(
            root=str(self.root),
            user=self.user,
            ctld_port=self.ports[0],
            n1_port=self.ports[1],
            n2_port=self.ports[2],
            cpus=self.cpus,
            real_memory=self.real_memory_mb,
            kill_wait=self.kill_wait,
            # schedule as soon as anything changes; requeued jobs are not held back
            sched_params="sched_min_interval=0,batch_sched_delay=0",
        )
        self.conf.write_text(text)
        return self.conf

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for SLURM commands: ours, minus any outer SLURM_* job variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        path = env.get("PATH", "")
        for d in ("/usr/sbin", "/sbin"):
            if d not in path.split(os.pathsep):
                path = path + os.pathsep + d
        env["PATH"] = path
        if extra:
            env.update({k: str(v) for k, v in extra.items()})
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30, env=None) -> subprocess.CompletedProcess:
        p = subprocess.run(list(cmd), env=env or self.env(), capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(cmd)} failed (rc={p.returncode}):\n{p.stdout}{p.stderr}\n{self.log_tails()}"
            )
        return p

    def log_tails(self, n: int = 25) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {f} (last {n} lines) ---\n{_tail(f, n)}")
        return "\n".join(parts) or f"<no logs in {self.root / 'log'}>"

    def start(self, timeout: float = 60) -> "LocalSlurmCluster":
        missing = self.missing_binaries()
        if missing:
            raise SlurmClusterError(f"SLURM binaries not found: {missing} (apt-get install slurm-wlm)")
        try:
            self._pick_ports()
        except SlurmClusterError:
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.render_conf()
        env = self.env()
        try:
            # slurmctld -c: fresh state; the daemons fork into the background and write pid files
            self.run("slurmctld", "-c", "-f", str(self.conf), env=env)
            for node in NODES:
                self.run("slurmd", "-N", node, "-f", str(self.conf), env=env)
            self.started = True
            self.wait_idle(timeout)
        except Exception:
            self.stop()  # whatever did start; the temp dir (logs) stays for the error message
            raise
        return self

    def node_states(self) -> dict[str, str]:
        p = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
        states = {}
        for line in p.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if set(states) >= set(NODES) and all(states[n] == "idle" for n in NODES):
                return
            time.sleep(0.5)
        raise SlurmClusterError(
            f"nodes not idle after {timeout:.0f}s: {states or '<sinfo gave nothing>'}; conf {self.conf}\n"
            f"{self.log_tails()}"
        )

    # ------------------------------------------------------------------- jobs
    @staticmethod
    def free_port() -> int:
        """A free TCP port, e.g. for MASTER_PORT (Lightning's default, 15000 + the last 4 digits of
        the job id, collides between two test clusters on one host: both start at job id 1)."""
        return _free_ports(1)[0]

    def sbatch(
        self,
        script: str | os.PathLike,
        args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        script_args: list[str] | tuple[str, ...] = (),
        cwd: str | os.PathLike | None = None,
    ) -> str:
        """Submit ``script`` with sbatch options ``args``; ``env`` is added to the submitting
        environment (reaches the job with the default ``--export=ALL``). Returns the job id."""
        cmd = ["sbatch", "--parsable", *args, str(script), *script_args]
        p = subprocess.run(cmd, env=self.env(env), capture_output=True, text=True, timeout=30, cwd=cwd)
        if p.returncode != 0:
            raise SlurmClusterError(f"{' '.join(cmd)} failed (rc={p.returncode}):\n{p.stdout}{p.stderr}")
        return p.stdout.strip().split(";")[0]

    def job_infos(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` records (JobState, ExitCode, Restarts, Reason, NodeList, StdOut, ...):
        one per array task for an array job; [] once the job has aged out of slurmctld (MinJobAge)."""
        p = self.run("scontrol", "show", "job", "-o", str(job_id), check=False, timeout=10)
        if p.returncode != 0:
            return []
        return [parse_scontrol(line) for line in p.stdout.splitlines() if line.strip()]

    def job_info(self, job_id: str) -> dict[str, str]:
        infos = self.job_infos(job_id)
        return infos[0] if infos else {}

    def wait(self, job_id: str, timeout: float = 120, poll: float = 0.5) -> dict[str, str]:
        """Poll until the job reaches a terminal state (``sbatch --wait`` polls slowly) and return its
        ``scontrol show job`` record. A requeued job passes through PENDING again and is waited for.
        Raises SlurmClusterError on timeout (the job is left running)."""
        return self.wait_array(job_id, timeout, poll)[0]

    def wait_array(self, job_id: str, timeout: float = 120, poll: float = 0.5) -> list[dict[str, str]]:
        """Like :meth:`wait`, for every record of the job (all tasks of an array job)."""
        deadline = time.monotonic() + timeout
        infos: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            infos = self.job_infos(job_id)
            if infos and all(i.get("JobState") in TERMINAL_STATES for i in infos):
                return infos
            time.sleep(poll)
        states = [(i.get("JobId"), i.get("JobState"), i.get("Reason")) for i in infos]
        raise SlurmClusterError(f"job {job_id} not finished after {timeout:.0f}s: {states}\n{self.log_tails(10)}")

    def wait_for(self, job_id: str, predicate, timeout: float = 60, poll: float = 0.25) -> dict[str, str]:
        """Poll ``scontrol show job`` until ``predicate(info)`` is true; returns that info."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info and predicate(info):
                return info
            if info.get("JobState") in TERMINAL_STATES:
                break
            time.sleep(poll)
        raise SlurmClusterError(
            f"job {job_id}: condition not reached (JobState={info.get('JobState')}, "
            f"Reason={info.get('Reason')})"
        )

    def scancel(self, job_id: str, *args: str) -> None:
        self.run("scancel", *args, str(job_id), check=False)

    def signal(self, job_id: str, sig: str = "USR1", batch: bool = False, full: bool = False) -> None:
        """Send ``sig`` to a running job (``scancel --signal=SIG``); semantics verified here:

        default (neither flag): every process of every job step, i.e. the ``srun``-launched tasks
        AND their children (DataLoader workers too: proctrack signals the whole step), NOT the
        batch shell. That is where Lightning's SLURM requeue handler listens, and the same target
        as ``#SBATCH --signal=SIGUSR1@90``.
        ``batch=True`` (``--batch``): only the batch shell, no step (a bash ``trap`` runs once the
        foreground ``srun`` returns; without a trap, bash's default action for USR1 kills it).
        ``full=True`` (``--full``): the batch shell, its children and every step."""
        args = [f"--signal={sig}"]
        if batch:
            args.append("--batch")
        if full:
            args.append("--full")
        self.run("scancel", *args, str(job_id))

    # ------------------------------------------------------------------- stop
    def _pids(self) -> list[int]:
        """Daemon pids from our pid files, only if that pid is still one of our daemons (a pid
        file can outlive its process and the pid be reused)."""
        pids = []
        for f in (self.root / "run").glob("*.pid"):
            try:
                pid = int(f.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if "slurm" in cmdline and str(self.conf) in cmdline:
                pids.append(pid)
        return pids

    def stop(self, timeout: float = 15) -> None:
        if not self.conf.exists():
            return
        # Cancel whatever is left (slurmstepd and job processes outlive slurmd otherwise).
        try:
            jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self.run(
                    "squeue", "-h", "-o", "%i", check=False, timeout=10
                ).stdout.strip():
                    time.sleep(0.5)
        except subprocess.TimeoutExpired:  # no controller answering: just stop the daemons
            pass
        pids = self._pids()
        for pid in pids:
            try:
                os.kill(pid, _signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _alive(p)]
            time.sleep(0.2)
        for pid in alive:
            try:
                os.kill(pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
        for f in (self.root / "run").glob("*.pid"):
            f.unlink(missing_ok=True)
        self.started = False

    def cleanup(self) -> None:
        self.stop()
        if self._own_root and os.environ.get("ELASTIC_PL_KEEP_SLURM") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalSlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


if __name__ == "__main__":  # manual use: python tests/slurm_cluster.py  (Ctrl-C stops it)
    c = LocalSlurmCluster().start()
    print(f"cluster up: export SLURM_CONF={c.conf}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        c.cleanup()
