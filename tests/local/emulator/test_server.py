"""The emulator as a server: robustness to bad clients, authentication, restarts, the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusAuthenticationError

from docbus.local.emulator.config import parse_config
from docbus.local.emulator.server import EmulatorThread
from tests.local.emulator.conftest import CONFIG
from tests.local.emulator.helpers import receive_all


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 GET /\r\n\r\n",
        b"AMQP\x00\x01\x00\x00" + b"\x00\x00\x00\x10\x02\x00\x00\x00" + b"\xff" * 8,
        b"AMQP\x00\x01\x00\x00" + b"\x00\x00\x00\x04\x02\x00\x00\x00",
    ],
    ids=["not-amqp", "undecodable-frame", "frame-size-below-header"],
)
def test_a_bad_client_is_closed_without_disturbing_others(
    emulator: EmulatorThread, client: ServiceBusClient, garbage: bytes
) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("before"))
        reply = _raw_exchange(emulator.emulator.port, garbage)
        assert reply.startswith(b"AMQP")
        sender.send_messages(ServiceBusMessage("after"))
    assert sorted(str(m) for m in receive_all(client, "q", 2)) == ["after", "before"]


def test_bad_frame_gets_an_amqp_decode_error_close() -> None:
    with EmulatorThread(parse_config(CONFIG)) as emu:
        reply = _raw_exchange(
            emu.emulator.port,
            b"AMQP\x00\x01\x00\x00" + b"\x00\x00\x00\x10\x02\x00\x00\x00" + b"\x00\x53\x10\xff" * 2,
        )
    assert b"amqp:decode-error" in reply


def test_sas_keys_reject_a_wrong_key_and_accept_the_right_one() -> None:
    with EmulatorThread(parse_config(CONFIG), sas_keys={"admin": "right-key"}) as emu:
        good = emu.connection_string
        assert "SharedAccessKeyName=admin;SharedAccessKey=right-key" in good
        with ServiceBusClient.from_connection_string(good) as client:
            with client.get_queue_sender("q") as sender:
                sender.send_messages(ServiceBusMessage("signed"))
            assert [str(m) for m in receive_all(client, "q", 1)] == ["signed"]
        bad = good.replace("right-key", "wrong-key")
        with ServiceBusClient.from_connection_string(bad, retry_total=0) as client:
            with pytest.raises(ServiceBusAuthenticationError):
                with client.get_queue_sender("q") as sender:
                    sender.send_messages(ServiceBusMessage("forged"))


def test_data_dir_keeps_messages_across_a_restart(tmp_path: Path) -> None:
    config = parse_config(CONFIG)
    with EmulatorThread(config, data_dir=tmp_path) as emu:
        with ServiceBusClient.from_connection_string(emu.connection_string) as client:
            with client.get_queue_sender("q") as sender:
                sender.send_messages([ServiceBusMessage(f"keep{i}") for i in range(3)])
            with client.get_queue_receiver("q") as receiver:
                (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
                receiver.complete_message(m)
                (locked,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
            first_seq = locked.sequence_number
    with EmulatorThread(config, data_dir=tmp_path) as emu:
        with ServiceBusClient.from_connection_string(emu.connection_string) as client:
            got = sorted(receive_all(client, "q", 2), key=lambda m: m.sequence_number)
            assert [str(m) for m in got] == ["keep1", "keep2"]
            assert got[0].sequence_number == first_seq
            assert got[0].delivery_count == 1  # it was locked when the emulator stopped
            with client.get_queue_sender("q") as sender:
                sender.send_messages(ServiceBusMessage("new"))
            (new,) = receive_all(client, "q", 1)
            assert new.sequence_number > got[-1].sequence_number


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_prints_the_connection_string_and_stops_on_sigterm(tmp_path: Path) -> None:
    import json

    config_path = tmp_path / "Config.json"
    config_path.write_text(json.dumps(CONFIG))
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "docbus",
            "emulator",
            "--port",
            str(port),
            "--config",
            str(config_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == (
            f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
            "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
        )
        with ServiceBusClient.from_connection_string(line) as client:
            with client.get_queue_sender("q") as sender:
                sender.send_messages(ServiceBusMessage("via cli"))
            assert [str(m) for m in receive_all(client, "q", 1)] == ["via cli"]
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
