"""A real multi-node Ray cluster on this machine, started the way users start one: a head node
(`ray start --head`) and worker nodes (`ray start --address`), each its own raylet with its own
resources, every address 127.0.0.1, token authentication on as Ray's default has it.

Each node runs `ray start --block` in a session of its own, so a test can lose a node the way a machine
dies (SIGKILL to its raylet and every worker it started) without touching the other nodes, or the
test session's own local Ray (`ray stop` would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Iterator, Sequence

BIN = os.path.dirname(sys.executable)  # the venv: `ray job submit` runs the python on PATH at `ray start`
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: a job's working dir
LOOPBACK = "127.0.0.1"


def bare_python(folder: str) -> str:
    """A Python environment with this one's packages (torch, Ray) but not boostray, as on a cluster node
    that never installed it: a venv whose .pth lists this venv's site-packages, whose own .pth files
    (boostray's editable install among them) a listed folder does not run. Returns its bin folder,
    with a ``ray`` command."""
    import sysconfig

    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", folder], check=True)
    site = subprocess.run([os.path.join(folder, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "packages-of-the-test-venv.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    ray = os.path.join(folder, "bin", "ray")
    with open(ray, "w") as f:
        f.write(f"#!{folder}/bin/python\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n")
    os.chmod(ray, 0o755)
    return os.path.join(folder, "bin")


def can_hide_folders() -> bool:
    """Whether a process can get a mount namespace of its own here (root, unshare): a node that does
    not see a folder of this machine's filesystem."""
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def running_cluster(workdir: str, nodes: Sequence[str], *, node_bin: str = BIN,
                    object_store_bytes: int | None = None) -> Iterator["LocalCluster"]:
    """A head with no CPUs for training (the GCS, the job drivers, Serve's proxy: so any rank's node can
    be lost) and one 1-CPU node per name in ``nodes``; every process is gone after the block."""
    c = LocalCluster(workdir, node_bin=node_bin)
    try:
        c.start_head(cpus=0, object_store_bytes=object_store_bytes)
        for name in nodes:
            c.add_node(name, cpus=1, object_store_bytes=object_store_bytes)
        yield c
    finally:
        c.shutdown()


def submit(cluster: "LocalCluster", pipeline: str, *args: str, env: dict | None = None, popen: bool = False):
    """`ray job submit --working-dir .` from the repository root, as the README shows it."""
    cmd = [os.path.join(BIN, "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ROOT]
    if env:
        cmd += ["--runtime-env-json", json.dumps({"env_vars": env})]
    cmd += ["--", "python", f"pipelines/{pipeline}", *args]
    if popen:
        return subprocess.Popen(cmd, env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=900)


def free_port() -> int:
    """A TCP port nothing listens on now (from the kernel's ephemeral range, outside Ray's worker ports)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, workdir: str, node_bin: str = BIN) -> None:
        """``node_bin``: the folder of the ``ray`` and ``python`` the nodes run (and jobs, on their PATH)."""
        self.workdir, self.node_bin = workdir, node_bin
        self.temp_dir = os.path.join("/tmp", f"ray-cluster-{uuid.uuid4().hex[:8]}")  # short: socket paths
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("RAY_") or k == "RAY_USAGE_STATS_ENABLED"}
        self.env.update(PATH=f"{node_bin}:{self.env.get('PATH', '')}", RAY_AUTH_MODE="token", XDG_CACHE_HOME=os.path.join(workdir, "cache"),
                        RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0")
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, str] = {}  # name -> Ray node id

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], cpus: float, resources: str, object_store_bytes: int | None,
               hidden: str | None = None) -> None:
        log = open(os.path.join(self.workdir, f"node-{name}.log"), "w")
        # ``hidden``: the node sees an empty folder of its own there (a tmpfs in a mount namespace of its own)
        wrap = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs node-private "$0" && exec "$@"', hidden] if hidden else []
        cmd = [*wrap, os.path.join(self.node_bin, "ray"), "start", "--block", "--node-ip-address", LOOPBACK,
               "--num-cpus", str(cpus), "--resources", resources, "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
               *(["--object-store-memory", str(object_store_bytes)] if object_store_bytes else []), *args]
        self.nodes[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True, cwd=self.workdir)

    def start_head(self, cpus: float = 1, object_store_bytes: int | None = None) -> None:
        self._start("head", ["--head", "--port", str(self.port), "--dashboard-host", LOOPBACK,
                             "--dashboard-port", str(self.dashboard_port), "--temp-dir", self.temp_dir,
                             "--ray-client-server-port", str(free_port())], cpus, '{"head": 1}', object_store_bytes)
        self.node_ids["head"] = self.wait_for_new_node(set())

    def add_node(self, name: str, cpus: float = 1, object_store_bytes: int | None = None, hidden: str | None = None) -> str:
        """Start a worker node; returns its Ray node id. ``hidden``: a folder this node does not see."""
        known = {n["node_id"] for n in self.alive_nodes()}
        # its own session folder, as on its own machine: nodes sharing one would garbage-collect each
        # other's runtime environments (a job's working directory) and read each other's logs
        self._start(name, ["--address", self.address, "--temp-dir", f"{self.temp_dir}-{name}"], cpus, f'{{"{name}": 1}}',
                    object_store_bytes, hidden)
        self.node_ids[name] = self.wait_for_new_node(known)
        return self.node_ids[name]

    def kill_node(self, name: str) -> str:
        """Lose a node the way a machine dies: SIGKILL to its `ray start`, raylet and the processes in
        their group (the workers exit when their raylet is gone). Returns its node id."""
        proc = self.nodes.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return self.node_ids[name]

    def cli(self, program: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray ...` or `serve ...` as a user on this cluster runs them (its token, its python)."""
        return subprocess.run([os.path.join(BIN, program), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)

    def post_when_ready(self, url: str, body: bytes, timeout: float = 180) -> dict:
        """POST until the application answers 200 (`serve deploy` returns before its replicas are up)."""
        deadline, pause, last = time.monotonic() + timeout, threading.Event(), None
        while time.monotonic() < deadline:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.load(response)
            except (urllib.error.URLError, ConnectionError) as err:  # no proxy yet, or 404/503 until the app is up
                last = err
            pause.wait(0.5)
        raise TimeoutError(f"{url} did not answer within {timeout} s: {last}")

    def state_api(self, resource: str) -> list[dict]:
        """GET the head's state API (what `ray list` reads) with the cluster's token: this process keeps
        its own Ray settings, so the ray.util.state client would not authenticate."""
        request = urllib.request.Request(f"{self.dashboard}/api/v0/{resource}?limit=10000",
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state_api("nodes") if n["state"] == "ALIVE"]

    def wait_for_new_node(self, known: set[str], timeout: float = 120) -> str:
        """Poll the head's state API until a node not in ``known`` is alive (a start takes seconds)."""
        deadline, pause = time.monotonic() + timeout, threading.Event()
        while time.monotonic() < deadline:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"node {name} exited: see {self.workdir}/node-{name}.log")
            try:
                new = {n["node_id"] for n in self.alive_nodes()} - known
            except (OSError, KeyError, ValueError):  # the head's dashboard is still starting
                new = set()
            if new:
                return new.pop()
            pause.wait(0.5)
        raise TimeoutError(f"no new node alive after {timeout} s")

    def shutdown(self) -> None:
        """SIGKILL every node's process group, then every process still carrying this cluster's token in
        its environment (a worker that left the group), and remove the session folder."""
        for proc in self.nodes.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.nodes.clear()
        marker = f"RAY_AUTH_TOKEN={self.env['RAY_AUTH_TOKEN']}".encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        os.kill(int(pid), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
        for folder in glob.glob(f"{self.temp_dir}*"):
            shutil.rmtree(folder, ignore_errors=True)
