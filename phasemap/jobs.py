"""Sweeps as Ray Jobs on a cluster: submit, status, logs, stop, through Ray's Jobs API (HTTP).

The sweep file travels with the job (as an environment variable of its runtime_env); the
driver runs `phasemap run - --address auto --out OUT` on the cluster with the file on stdin,
so the laptop can disconnect; resubmitting the same sweep to the same OUT runs only what is
missing.

Clusters started with RAY_AUTH_MODE=token want a bearer token on every request. The token is
read from --token-file, else RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else
~/.ray/auth_token; it is sent as a header and never printed, logged or put in the job.

    cluster = Cluster("http://127.0.0.1:8265")
    job_id = cluster.submit("sweeps/quickstart.yaml", [], "/shared/results/qs")
    cluster.status(job_id)                    # "RUNNING", "SUCCEEDED", ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import time
from pathlib import Path
from typing import Callable, Iterator

from phasemap.grid import DEFAULT_MAX_CONFIGS, expand
from phasemap.spec import load_spec

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SPEC_VAR = "PHASEMAP_SWEEP_YAML"
AGENT_WAIT_S = 60.0    # how long submit retries while the head's job agent is not ready


class ClusterError(RuntimeError):
    """The cluster cannot be reached, refused us, or does not know the job; says which and why."""


def default_address() -> str:
    """RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS, else the dashboard on this machine."""
    for key in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(key, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def read_token(token_file: str | Path | None = None) -> str | None:
    """The cluster's auth token, or None when none is configured anywhere."""
    if token_file:
        source, path = "--token-file", Path(token_file)
    elif os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        source, path = "RAY_AUTH_TOKEN_PATH", Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    else:
        source, path = "the default token file", Path.home() / ".ray" / "auth_token"
        if not path.exists():
            return None
    try:
        token = path.expanduser().read_text().strip()
    except OSError as err:
        raise ClusterError(f"cannot read the auth token file {path} ({source}): {err.strerror or err}") from err
    if not token:
        raise ClusterError(f"the auth token file {path} ({source}) is empty")
    return token


@contextlib.contextmanager
def _translated(address: str, token: str | None) -> Iterator[None]:
    """Turn the Jobs client's exceptions into ClusterError messages a user can act on."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        if token is None:
            why = ("it requires a token (RAY_AUTH_MODE=token) and none was given: set RAY_AUTH_TOKEN, "
                   "or pass --token-file, or put the cluster's token in ~/.ray/auth_token")
        else:
            why = "the token given was rejected (it is not this cluster's token)"
        raise ClusterError(f"authentication failed at {address}: {why}") from err
    except ConnectionError as err:
        raise ClusterError(f"cannot reach the Ray Jobs API at {address}: is the cluster up and the "
                           "dashboard port forwarded (see cluster/README.md)?") from err
    except RuntimeError as err:
        text = str(err)
        if "status code 404" in text or "does not exist" in text:
            raise ClusterError(f"no such job at {address}: {text.splitlines()[0]}") from err
        raise ClusterError(f"the Ray Jobs API at {address} refused the request: {text.splitlines()[0]}") from err


class Cluster:
    """A Jobs API client for one cluster address, with phasemap's error messages."""

    def __init__(self, address: str | None = None, token_file: str | Path | None = None):
        from ray.job_submission import JobSubmissionClient

        self.address = address or default_address()
        self._token = read_token(token_file)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        with _translated(self.address, self._token):
            self.client = JobSubmissionClient(self.address, headers=headers)

    def __repr__(self) -> str:            # never show the token
        return f"Cluster({self.address!r})"

    def call(self, fn: Callable, *args, **kwargs):
        with _translated(self.address, self._token):
            return fn(*args, **kwargs)

    def submit(self, spec_path: str | Path, overrides: list[str], out: str, *, run_args: list[str] = (),
               submission_id: str | None = None, max_configs: int = DEFAULT_MAX_CONFIGS) -> str:
        """Validate the sweep here, then submit it as a Ray Job; return the job id."""
        sweep = load_spec(spec_path, overrides)
        expand(sweep, max_configs)        # grid points that do not resolve fail here, not on the cluster
        if "://" not in out and not os.path.isabs(out):
            raise ClusterError(f"--out {out}: give an absolute path on a filesystem every node mounts, "
                               "or a URI such as s3://bucket/results/NAME (a relative path would land in "
                               "the job's temporary working directory)")
        job_id = submission_id or f"phasemap-{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        command = ["phasemap", "run", "-", "--address", "auto", "--out", out]
        for item in overrides:
            command += ["--set", item]
        command += list(run_args)
        # The sweep file rides in the job's environment and reaches `phasemap run` on stdin.
        entrypoint = f"printenv {SPEC_VAR} | {shlex.join(command)}"
        # A head whose job agent is (re)starting answers "No available agent to submit job, please
        # try again later": it does, for a while, before giving up.
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return self.call(self.client.submit_job, entrypoint=entrypoint, submission_id=job_id,
                                 runtime_env={"env_vars": {SPEC_VAR: Path(spec_path).read_text()}},
                                 metadata={"phasemap_sweep": sweep.name, "phasemap_out": out})
            except ClusterError as err:
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def status(self, job_id: str) -> str:
        return str(self.call(self.client.get_job_status, job_id).value)

    def info(self, job_id: str):
        return self.call(self.client.get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        return self.call(self.client.get_job_logs, job_id)

    def follow(self, job_id: str, write: Callable[[str], None]) -> str:
        """Stream the job's logs to write() until it ends; return its final status."""
        async def tail() -> None:
            async for lines in self.client.tail_job_logs(job_id):
                write(lines)

        self.status(job_id)               # an unknown job or a bad token fails here, clearly
        with _translated(self.address, self._token):
            asyncio.run(tail())
        return self.wait(job_id)

    def wait(self, job_id: str, poll: float = 1.0, timeout: float | None = None) -> str:
        """Poll until the job is SUCCEEDED, FAILED or STOPPED; return that status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.status(job_id)
            if state in TERMINAL:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise ClusterError(f"job {job_id} still {state} after {timeout:.0f} s")
            time.sleep(poll)

    def stop(self, job_id: str) -> bool:
        """Ask the cluster to stop the job; False if it had already ended."""
        return bool(self.call(self.client.stop_job, job_id))

