"""A real two-node Ray cluster on this machine (cluster/local.sh, token auth on), driven through
the Jobs API: submission, status/logs/stop, a refused unauthenticated submission, a worker
process killed mid-sweep, and a driver killed with SIGKILL then resubmitted.

The cluster is started once for the module and always stopped (by the pids of its two nodes),
whatever the tests do.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from phasemap import store
from phasemap.cli import app
from phasemap.jobs import Cluster

pytestmark = pytest.mark.slow   # Ray processes: seconds to start, most of the suite's time

ROOT = Path(__file__).resolve().parents[1]
SWEEP = """name: {name}
task: {{teacher_rank: 2, input_dim: 5, n_train: 64, n_test: 32}}
model: {{width: 8}}
train: {{steps: {steps}}}
grid: {{gamma: {{logspace: [1.0e-3, 1.0e-1, 6]}}, seed: {{range: 4}}}}
"""
N_CONFIGS = 24


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1, each with the next port free too (outside Ray's worker range)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        if port > 20000 and port not in ports and port + 1 not in ports:
            ports.append(port)
    return ports


def descendants(root: int) -> list[int]:
    """Every process under `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster")
    gcs, dashboard, client, agent = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PHASEMAP_CLUSTER_DIR=str(state), GCS_PORT=str(gcs), DASHBOARD_PORT=str(dashboard),
               CLIENT_PORT=str(client), AGENT_PORT=str(agent),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    script = str(ROOT / "cluster" / "local.sh")
    try:
        started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"address": f"http://127.0.0.1:{dashboard}", "gcs": f"127.0.0.1:{gcs}", "token_file": state / "auth_token", "state": state,
               "env": env}
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)
        for node in ("worker", "head"):       # belt and braces: nothing of ours may outlive the module
            pid_file = state / f"{node}.pid"
            if pid_file.exists():
                try:
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


def invoke(*args, env=None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def write_sweep(folder: Path, name: str, steps: int) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(SWEEP.format(name=name, steps=steps))
    return path


def submit(cluster, spec: Path, out: Path, *extra) -> str:
    result = invoke("submit", spec, "--address", cluster["address"], "--token-file", cluster["token_file"],
                    "--out", out, "--chunk", 4, *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]     # the job id comes first


def node_pid(cluster, node: str) -> int:
    return int((cluster["state"] / f"{node}.pid").read_text())


def trial_workers(cluster, node: str) -> list[int]:
    """Ray Tune trial processes (function trainables run in ImplicitFunc actors) on one node."""
    return [p for p in descendants(node_pid(cluster, node)) if "ImplicitFunc" in cmdline(p)]


def kill_a_trial(cluster, node: str, tries: int = 20) -> int:
    """SIGKILL a running trial process on `node`, mid-chunk where the timing allows; its pid. A
    trial that ends between being found and being killed is skipped for the next one."""
    for _ in range(tries):
        victim = wait_for(lambda: trial_workers(cluster, node), 120, f"a trial on the {node} node")[0]
        time.sleep(0.5)
        try:
            os.kill(victim, signal.SIGKILL)
            return victim
        except ProcessLookupError:
            continue
    raise AssertionError(f"no trial on the {node} node lived long enough to be killed")


def assert_complete(out: Path, n: int = N_CONFIGS) -> pl.DataFrame:
    frame = pl.read_parquet(store.files(out))
    assert frame.height == n, frame.group_by("run_id").len().filter(pl.col("len") > 1)
    assert frame["run_id"].n_unique() == n
    assert set(frame["status"]) == {"ok"}
    return frame


def test_submission_without_a_valid_token_is_refused_clearly(cluster, tmp_path):
    spec = write_sweep(tmp_path, "noauth", 10)
    no_token = {"RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None, "RAY_AUTH_MODE": None, "HOME": str(tmp_path)}
    refused = invoke("submit", spec, "--address", cluster["address"], "--out", tmp_path / "out", env=no_token)
    assert refused.exit_code == 1
    assert "authentication failed" in refused.output and "token" in refused.output
    assert "Traceback" not in refused.output

    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    rejected = invoke("submit", spec, "--address", cluster["address"], "--out", tmp_path / "out",
                      "--token-file", wrong, env=no_token)
    assert rejected.exit_code == 1 and "token given was rejected" in rejected.output
    token = cluster["token_file"].read_text().strip()
    assert token not in refused.output + rejected.output
    jobs = Cluster(cluster["address"], cluster["token_file"]).client.list_jobs()
    assert not any((j.metadata or {}).get("phasemap_sweep") == "noauth" for j in jobs)
    assert not (tmp_path / "out").exists()


def test_a_sweep_survives_a_killed_worker_process(cluster, tmp_path):
    out = tmp_path / "out"
    job = submit(cluster, write_sweep(tmp_path, "killworker", 40000), out)
    victim = kill_a_trial(cluster, "worker")
    jobs = Cluster(cluster["address"], cluster["token_file"])
    assert jobs.wait(job, timeout=300) == "SUCCEEDED", jobs.logs(job)
    assert not Path(f"/proc/{victim}").exists()
    assert_complete(out)
    assert len(store.files(out)) == N_CONFIGS // 4     # the retried chunk replaced, not added

    status = invoke("status", job, "--address", cluster["address"], "--token-file", cluster["token_file"])
    assert status.exit_code == 0 and "SUCCEEDED" in status.output and str(out) in status.output
    logs = invoke("logs", job, "--address", cluster["address"], "--token-file", cluster["token_file"])
    assert logs.exit_code == 0 and f"wrote {N_CONFIGS} rows" in logs.output


def test_a_driver_killed_mid_sweep_then_resubmitted_runs_only_the_missing_configs(cluster, tmp_path):
    out = tmp_path / "out"
    # Chunks long enough that the ones in flight when the driver dies cannot all finish before Ray
    # tears them down (at 40,000 steps a fast machine sometimes finished every chunk first).
    spec = write_sweep(tmp_path, "killdriver", 160000)
    job = submit(cluster, spec, out)
    wait_for(lambda: len(store.files(out)) >= 2, 180, "the first chunks")
    drivers = [p for p in descendants(node_pid(cluster, "head"))
               if "phasemap run -" in cmdline(p) and str(out) in cmdline(p) and "printenv" not in cmdline(p)]
    assert len(drivers) == 1, [cmdline(p) for p in drivers]
    os.kill(drivers[0], signal.SIGKILL)
    jobs = Cluster(cluster["address"], cluster["token_file"])
    assert jobs.wait(job, timeout=120) == "FAILED"
    wait_for(lambda: not trial_workers(cluster, "head") and not trial_workers(cluster, "worker"), 60,
             "the killed driver's trials to go")
    done_before = len(pl.read_parquet(store.files(out)))
    assert 0 < done_before < N_CONFIGS

    again = submit(cluster, spec, out, "--wait")
    assert jobs.status(again) == "SUCCEEDED"
    assert f"{done_before} were already there" in jobs.logs(again).replace("\n", " ")
    assert_complete(out)


def test_stop_ends_a_running_job(cluster, tmp_path):
    job = submit(cluster, write_sweep(tmp_path, "stopme", 400000), tmp_path / "out")
    jobs = Cluster(cluster["address"], cluster["token_file"])
    wait_for(lambda: jobs.status(job) == "RUNNING", 60, "the job to run")
    stopped = invoke("stop", job, "--address", cluster["address"], "--token-file", cluster["token_file"])
    assert stopped.exit_code == 0 and "stop requested" in stopped.output
    assert jobs.wait(job, timeout=60) == "STOPPED"
    unknown = invoke("status", "no-such-job", "--address", cluster["address"], "--token-file", cluster["token_file"])
    assert unknown.exit_code == 1 and "no such job" in unknown.output


def test_run_joins_the_cluster_with_its_token_and_is_refused_without(cluster, tmp_path):
    spec = write_sweep(tmp_path, "join", 100)
    env = {k: v for k, v in cluster["env"].items() if not k.startswith("PHASEMAP_")}
    command = [sys.executable, "-m", "phasemap.cli", "run", str(spec), "--address", cluster["gcs"]]
    refused = subprocess.run(command + ["--out", str(tmp_path / "refused")], env=env, capture_output=True,
                             text=True, timeout=180)
    assert refused.returncode == 1
    assert "cannot connect to the Ray cluster" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr

    joined = subprocess.run(command + ["--out", str(tmp_path / "joined")], capture_output=True, text=True,
                            env={**env, "RAY_AUTH_TOKEN_PATH": str(cluster["token_file"])}, timeout=180)
    assert joined.returncode == 0, joined.stderr
    assert cluster["token_file"].read_text().strip() not in joined.stdout + joined.stderr
    assert_complete(tmp_path / "joined")


def test_a_transformer_sweep_runs_on_the_two_node_cluster(cluster, tmp_path):
    out = tmp_path / "transformer"
    command = [sys.executable, "-m", "phasemap.cli", "run", str(ROOT / "sweeps" / "transformer.yaml"),
               "--address", cluster["gcs"], "--out", str(out), "--set", "train.steps=60", "--set", "task.n_train=64",
               "--set", "task.n_test=32", "--set", "train.batch_size=16", "--set", "grid.gamma=[0.0, 30.0]"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**cluster["env"], "RAY_AUTH_TOKEN_PATH": str(cluster["token_file"])})
    assert done.returncode == 0, done.stderr
    frame = pl.read_parquet(str(out / "**" / "*.parquet"))
    assert frame.height == 8 and set(frame["status"]) == {"ok"} and set(frame["family"]) == {"transformer"}
    assert frame["layer_qk_rank"].null_count() == 0 and frame["n_dos"].null_count() == 0


def test_the_shipped_cluster_configs_turn_on_token_auth_and_keep_the_dashboard_private():
    import yaml

    launcher = yaml.safe_load((ROOT / "cluster" / "ray-up-gpu.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(launcher[key])
        assert "RAY_AUTH_MODE=token" in start and "RAY_AUTH_TOKEN_PATH" in start
    assert "--dashboard-host=127.0.0.1" in " ".join(launcher["head_start_ray_commands"])

    job = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())["spec"]
    ray_spec = job["rayClusterSpec"]
    assert ray_spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    pods = [ray_spec["headGroupSpec"]["template"]] + [g["template"] for g in ray_spec["workerGroupSpecs"]]
    pods.append(job["submitterPodTemplate"])
    for pod in pods:
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]   # never a literal token

    local = (ROOT / "cluster" / "local.sh").read_text()
    assert "RAY_AUTH_MODE=token" in local and "--dashboard-host 127.0.0.1" in local


def test_submit_waits_for_a_job_agent_that_is_not_ready_yet(tmp_path, monkeypatch):
    from phasemap import jobs

    class Client:
        calls = 0

        def submit_job(self, **kwargs):
            Client.calls += 1
            if Client.calls < 3:
                raise RuntimeError("Request failed with status code 500: No available agent to submit job, "
                                   "please try again later.")
            return kwargs["submission_id"]

    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    cluster = jobs.Cluster.__new__(jobs.Cluster)
    cluster.address, cluster._token, cluster.client = "http://127.0.0.1:1", None, Client()
    spec = write_sweep(tmp_path, "agent", 10)
    assert cluster.submit(spec, [], str(tmp_path / "out"), submission_id="job-1") == "job-1"
    assert Client.calls == 3
    monkeypatch.setattr(jobs, "AGENT_WAIT_S", -1.0)     # past the wait: the error, in one line
    Client.calls = 0
    with pytest.raises(jobs.ClusterError, match="refused the request: .*No available agent"):
        cluster.submit(spec, [], str(tmp_path / "out"), submission_id="job-2")
