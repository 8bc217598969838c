"""Real servers for the scale-out tests: PostgreSQL and Redis, started here on 127.0.0.1 and stopped by pid.

Both come from Debian packages (`postgresql`, `redis-server`; .ci/run installs them). Where they are missing
the tests skip on a developer's machine and fail in CI (CI=true), so a broken install step cannot pass.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest


def require(what: str, found: str | None) -> str:
    """`found`, else skip (developer machine) or fail (CI) naming the package to install."""
    if found:
        return found
    message = f"{what} is not installed (apt-get install postgresql redis-server; .ci/run does)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready, what: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, group: bool = False, timeout_s: float = 20.0) -> None:
    """Stop a process we started, by its pid, then reap it. With `group`, its whole process group (it was
    started as the group's leader): the children it spawned too (a daemon's code server and run workers),
    killed once the grace period ends."""
    if proc.poll() is None:
        _signal(proc, sig, group)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL, group)
            proc.wait(timeout_s)
    if group:  # what is left of the group had the grace period already (a code server waiting on its runs)
        deadline = time.monotonic() + 5.0
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal(proc, signal.SIGKILL, group)


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    try:
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _postgres_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _server_user() -> pwd.struct_passwd | None:
    """initdb and postgres refuse to run as root: as root, run them as Debian's `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return require("the postgres system user", None)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL cluster with a `dagster` database; yields the DAGSTER_PG_* settings for it."""
    bindir = require("PostgreSQL (initdb)", _postgres_bin())
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="stratum-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if user is not None:
        os.chmod(root, 0o755)
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    db_user = user.pw_name if user else pwd.getpwuid(os.geteuid()).pw_name
    subprocess.run([f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", db_user, "--no-sync"],
                   check=True, capture_output=True, **run_as)
    port = free_port()
    server = subprocess.Popen(
        [f"{bindir}/postgres", "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets),
         "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL, stderr=open(root / "postgres.log", "wb"), **run_as)
    try:
        wait_until(lambda: _port_open(port) and subprocess.run(
            [f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode == 0,
            "postgres", proc=server)
        subprocess.run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", db_user, "dagster"],
                       check=True, capture_output=True)
        yield {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_DB": "dagster",
               "DAGSTER_PG_USER": db_user, "DAGSTER_PG_PASSWORD": "unused-with-trust-auth"}
    finally:
        stop(server, signal.SIGINT)  # "fast" shutdown
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A throwaway Redis (no persistence) on a free loopback port: the Celery broker and result backend."""
    binary = require("redis-server", shutil.which("redis-server"))
    port = free_port()
    server = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--protected-mode", "yes"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _port_open(port), "redis-server", proc=server)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(server)
