"""Servers for the MLflow tests: a throwaway PostgreSQL cluster (the cluster setup, on one machine) and a server
that never answers.

Debian's PostgreSQL runs as the postgres user from a temporary data directory, on 127.0.0.1 and a free port, with
a database ``mlflow``; ``postgres`` is the fixture, ``postgres_cluster`` the same as a context manager.
"""
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from limit.tracking.server import free_port

from pipeline_helpers import ensure_debian_packages


def psycopg2_driver():
    try:
        import psycopg2
    except ImportError:  # not a project dependency (yet): the dev extra should list psycopg2-binary
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "psycopg2-binary"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"pip install psycopg2-binary failed: {done.stderr[-2000:]}"
        import psycopg2
    return psycopg2


@contextlib.contextmanager
def postgres_cluster(max_connections=50):
    """Yields the SQLAlchemy URI of a new PostgreSQL database; stops the cluster and removes it afterwards."""
    ensure_debian_packages("postgresql")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    assert bins, "Debian's postgresql is installed but no /usr/lib/postgresql/*/bin/initdb"
    bin_dir = Path(bins[-1]).parent
    owner = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="limit-pg-"))  # pytest's tmp dirs are private to root
    os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", free_port()

    def as_postgres(*cmd, timeout=120):
        done = subprocess.run([str(c) for c in cmd], user="postgres", cwd=base, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"

    pid = None
    try:
        as_postgres(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        as_postgres(bin_dir / "pg_ctl", "start", "-D", data, "-l", base / "postgres.log", "-w", "-t", "60",
                    "-o", f"-k {base} -h 127.0.0.1 -p {port} -c fsync=off -c max_connections={max_connections}")
        pid = int((data / "postmaster.pid").read_text().split()[0])
        as_postgres(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        if pid:
            os.kill(pid, signal.SIGINT)  # fast shutdown of the postmaster (it ends its backends)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.2)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL database on 127.0.0.1:PORT; yields its SQLAlchemy URI."""
    if os.geteuid() != 0:
        pytest.skip("starting PostgreSQL as the postgres user needs root")
    with postgres_cluster() as uri:
        yield uri


class PassThroughClient:
    """An MLflow client whose calls pass through to ``client``: a test subclasses it to make one call fail or count."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)


class HungServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a wedged proxy or server)."""

    def __init__(self, port):
        self.sock = socket.create_server(("127.0.0.1", port))
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.connections.append(self.sock.accept()[0])
            except OSError:  # closed
                return

    def close(self):
        self.sock.close()
        for conn in self.connections:
            conn.close()
