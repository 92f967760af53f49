from __future__ import annotations

import importlib.util
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from docbus.local.mongo import LocalMongo, LocalMongoError


def ping(uri: str) -> bool:
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=2000)
    try:
        return client.admin.command("ping")["ok"] == 1.0
    finally:
        client.close()


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_async_start_serves_pymongo_and_stop_frees_the_port() -> None:
    async with LocalMongo() as mongo:
        assert mongo.running
        assert mongo.uri == f"mongodb://127.0.0.1:{mongo.port}/?retryWrites=false"
        assert ping(mongo.uri)
        port = mongo.port
    assert not mongo.running
    assert refuses_connections(port)


def test_data_dir_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    with LocalMongo(data_dir=data) as mongo:
        client: MongoClient[dict[str, object]] = MongoClient(mongo.uri)
        client.db.things.insert_one({"_id": "kept"})
        client.close()
    with LocalMongo(data_dir=data) as mongo:
        client = MongoClient(mongo.uri)
        assert client.db.things.find_one({"_id": "kept"}) == {"_id": "kept"}
        client.close()


def test_a_busy_port_is_a_clear_error(local_mongo: LocalMongo) -> None:
    with pytest.raises(LocalMongoError, match=f"port {local_mongo.port} is already in use"):
        LocalMongo(port=local_mongo.port).start_sync()


def test_a_crashing_server_reports_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'fatal: storage is corrupt' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(LocalMongoError) as caught:
        LocalMongo(python=str(fake)).start_sync()
    message = str(caught.value)
    assert "exited with status 3" in message
    assert "fatal: storage is corrupt" in message


def test_missing_secantusdb_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "secantus" else real(name, *a)
    )
    with pytest.raises(LocalMongoError, match=r"pip install 'docbus\[local\]'"):
        LocalMongo().start_sync()


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    mongo = LocalMongo(python=str(fake), startup_timeout=0.5)
    with pytest.raises(LocalMongoError, match=r"did not answer ping within 0\.5 s"):
        mongo.start_sync()
    assert not mongo.running


def test_a_killed_server_restarts_at_once_on_its_port(tmp_path: Path) -> None:
    # The killed server's connections linger in TIME_WAIT for a minute; SecantusDB can listen
    # again at once (SO_REUSEADDR), so the launcher must not call the port taken.
    data = tmp_path / "mongo"
    first = LocalMongo(data_dir=data)
    first.start_sync()
    port = first.port
    # (a short server selection: closing a client whose server is gone waits for one)
    client: MongoClient[dict[str, object]] = MongoClient(first.uri, serverSelectionTimeoutMS=300)
    client["t"]["c"].insert_one({"_id": 1})
    assert first.pid is not None
    first.kill_sync()
    client.close()
    assert first.pid is None
    with LocalMongo(port=port, data_dir=data) as again:
        assert again.port == port and ping(again.uri)


def test_the_server_ends_when_the_process_that_started_it_dies() -> None:
    # A test run or `docbus up` killed outright (SIGKILL, OOM) never gets to stop its server:
    # the server must notice its starter is gone and end rather than linger on its port.
    starter = subprocess.Popen([sys.executable, "-c", _STARTER], stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        pid, port = map(int, starter.stdout.readline().split())
        assert ping(f"mongodb://127.0.0.1:{port}/")
        starter.kill()
        starter.wait()
        assert ended(pid, within=15)
        assert refuses_connections(port)
    finally:
        starter.kill()
        starter.wait()


_STARTER = """
import sys, time
from docbus.local.mongo import LocalMongo
mongo = LocalMongo()
mongo.start_sync()
print(mongo.pid, mongo.port, flush=True)
time.sleep(600)
"""


def ended(pid: int, *, within: float) -> bool:
    """True once process ``pid`` has exited (it is no child of ours: poll its /proc entry)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, waiting for init to reap it
            return True
        time.sleep(0.05)
    return False
