"""``docbus emulator``: run the local Service Bus emulator (:mod:`docbus.local.emulator`) in the
foreground, printing its connection string, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
from pathlib import Path

from docbus.cli.arguments import port
from docbus.cli.runner import say_error
from docbus.local.emulator.config import ConfigError, load_config
from docbus.local.emulator.server import Emulator

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=5672, help="AMQP port (default 5672)")
    parser.add_argument("--config", type=Path, help="entities, in Microsoft's Config.json schema")
    parser.add_argument("--data-dir", type=Path, help="keep messages across restarts here")
    parser.add_argument(
        "--sas-key",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="verify CBS token signatures against this key (repeatable)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config) if args.config else None
        keys = {}
        for item in args.sas_key:
            name, sep, key = item.partition("=")
            if not sep or not name or not key:
                raise ValueError(f"--sas-key {item!r}: expected NAME=KEY")
            keys[name] = key
    except (ConfigError, ValueError, OSError) as exc:
        say_error("emulator", str(exc))
        return 2
    emulator = Emulator(
        config, host=args.host, port=args.port, data_dir=args.data_dir, sas_keys=keys
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with emulator:
            print(emulator.connection_string, flush=True)
            await stop.wait()
            logger.info("stopping the emulator")

    try:
        asyncio.run(main())
    except OSError as exc:
        say_error("emulator", f"cannot listen on {args.host}:{args.port}: {exc}")
        return 3 if exc.errno == errno.EADDRINUSE else 1  # in use: try again once it is free
    return 0
