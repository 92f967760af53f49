"""``docbus up``: start the local stack (:mod:`docbus.local.stack`) and wait until Ctrl-C.

It prints the ``export`` lines that point every other command at the stack; a data directory
that another stack holds, or a port in use, is one line and exit 3 (``StackInUse``).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import shlex
import signal
from pathlib import Path

from docbus.cli.arguments import non_negative_seconds, port
from docbus.local.stack import LocalStack, StackInUse, StackOptions, hold_data_dir, port_in_use
from docbus.topology import load_topology

__all__ = ["EXIT_CODES", "add_arguments", "busy_port", "run"]

EXIT_CODES = {
    3: "a port or the data directory is in use (by another `docbus up`?): stop it, or choose "
    "other ports, --data-dir or --memory",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topology", type=Path, help="topology file (default infra/topology.toml)")
    parser.add_argument("--servicebus-port", type=port, default=5672, help="emulator port (5672)")
    parser.add_argument("--mongo-port", type=port, default=27017, help="SecantusDB port (27017)")
    parser.add_argument("--llm-port", type=port, default=8089, help="offline LLM port (8089)")
    parser.add_argument(
        "--llm-latency", type=non_negative_seconds, default=0.0, help="seconds per LLM call"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".docbus"), help="state kept here (.docbus)"
    )
    parser.add_argument("--memory", action="store_true", help="keep nothing across restarts")


_PORTS = (
    ("servicebus_port", "Service Bus emulator", "--servicebus-port"),
    ("mongo_port", "SecantusDB", "--mongo-port"),
    ("llm_port", "offline LLM server", "--llm-port"),
)


def busy_port(args: argparse.Namespace) -> str | None:
    """What to say about the first of ``docbus up``'s ports that is taken, or None."""
    for attribute, what, flag in _PORTS:
        port = getattr(args, attribute)
        if port and port_in_use(port):
            return (
                f"port {port} ({what}) is in use — is `docbus up` already running? Stop it, or "
                f"choose another port with {flag}"
            )
    return None


def run(args: argparse.Namespace) -> int:
    options = StackOptions(
        topology=load_topology(args.topology) if args.topology else None,
        emulator_port=args.servicebus_port,
        mongo_port=args.mongo_port,
        llm_port=args.llm_port,
        llm_latency=args.llm_latency,
        data_dir=None if args.memory else args.data_dir,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with LocalStack(options) as stack:
            print("# docbus local stack is up; in another shell run:")
            for name, value in stack.environment().items():
                print(f"export {name}={shlex.quote(value)}")
            print("# then `docbus console` serves the operator console on http://127.0.0.1:8765/")
            print("# Ctrl-C stops it.", flush=True)
            await stop.wait()

    # The data directory first: its lock names the stack that holds it, the likelier story.
    # A directory that does not exist yet is held by no one: it is created only once the
    # ports are free, so a refused start leaves nothing behind.
    data_dir = options.data_dir
    if data_dir is not None and data_dir.exists():
        hold_data_dir(data_dir).close()
    busy = busy_port(args)
    if busy is not None:
        raise StackInUse(busy)
    if data_dir is not None and not data_dir.exists():
        hold_data_dir(data_dir).close()
    try:
        asyncio.run(main())
    except OSError as exc:  # a port taken between the check and the start
        if exc.errno == errno.EADDRINUSE:
            raise StackInUse(f"a port is in use ({exc}): is `docbus up` already running?") from exc
        raise
    return 0
