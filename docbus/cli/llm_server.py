"""``docbus llm-server [--port 8089] [--latency 0.2] ...``: the offline LLM server
(:mod:`docbus.local.llm_server`) in the foreground. ``--batch-processing SECONDS`` and
``--batch-expire-share SHARE`` set its Batch API's processing time and expiry share
(:class:`~docbus.local.llm_server.batch_config.BatchConfig`; the other batch knobs are set
through ``POST /_admin/config``).

:func:`add_arguments` declares the flags, :func:`config_from_args` turns them into an
:class:`~docbus.local.llm_server.config.LLMServerConfig`, and :func:`run` serves until SIGINT or
SIGTERM; the runner (:mod:`docbus.cli.runner`) configures logging, as for every command.
"""

from __future__ import annotations

import argparse
import errno

from docbus.cli.arguments import non_negative_seconds, port, positive_int, share
from docbus.cli.runner import say_error
from docbus.local.llm_server.batch_config import BatchConfig
from docbus.local.llm_server.config import OFFLINE_MODEL, Faults, Latency, Limits, LLMServerConfig
from docbus.local.llm_server.server import LLMServer

DEFAULT_PORT = 8089


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the server's flags on ``parser``."""
    defaults = LLMServerConfig()
    faults = Faults()
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=defaults.host, help="address to bind (%(default)s)")
    server.add_argument("--port", type=port, default=DEFAULT_PORT, help="0 = any free port")
    server.add_argument("--model", default=OFFLINE_MODEL, help="model listed in /v1/models")
    server.add_argument("--strict-model", action="store_true", help="404 for any other model name")
    server.add_argument("--api-key", default=None, help="require this key (401 otherwise)")
    server.add_argument("--seed", type=int, default=0, help="seed of fault and latency draws")
    server.add_argument(
        "--no-json-schema",
        dest="json_schema",
        action="store_false",
        help="reject response_format json_schema with a 400, like servers without it",
    )

    latency = parser.add_argument_group("latency (seconds)").add_mutually_exclusive_group()
    latency.add_argument("--latency", type=non_negative_seconds, metavar="S", help="fixed delay")
    latency.add_argument(
        "--latency-uniform",
        type=non_negative_seconds,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="uniform delay",
    )
    latency.add_argument(
        "--latency-lognormal",
        type=non_negative_seconds,
        nargs=2,
        metavar=("MEDIAN", "P95"),
        help="log-normal delay with this median and 95th percentile",
    )

    inject = parser.add_argument_group("injected faults (probability per request)")
    inject.add_argument("--rate-429", type=share, default=0.0, metavar="P")
    inject.add_argument(
        "--retry-after",
        type=non_negative_seconds,
        default=faults.retry_after,
        metavar="S",
        help="Retry-After of injected 429s (%(default)s)",
    )
    inject.add_argument("--rate-500", type=share, default=0.0, metavar="P")
    inject.add_argument("--rate-503", type=share, default=0.0, metavar="P")
    inject.add_argument("--rate-timeout", type=share, default=0.0, metavar="P")
    inject.add_argument(
        "--timeout-hold",
        type=non_negative_seconds,
        default=faults.timeout_hold,
        metavar="S",
        help="how long a timed-out request is held (%(default)s)",
    )
    inject.add_argument(
        "--timeout-mode",
        choices=("drop", "late"),
        default=faults.timeout_mode,
        help="after the hold: drop the connection or answer late (%(default)s)",
    )
    inject.add_argument("--rate-malformed", type=share, default=0.0, metavar="P")
    inject.add_argument(
        "--rate-schema",
        type=share,
        default=0.0,
        metavar="P",
        help="valid JSON that violates the requested schema",
    )

    limits = parser.add_argument_group("limits")
    limits.add_argument("--tpm", type=positive_int, default=None, help="tokens per minute")
    limits.add_argument("--rpm", type=positive_int, default=None, help="requests per minute")
    limits.add_argument(
        "--context-tokens",
        type=positive_int,
        default=Limits().context_tokens,
        help="maximum prompt + completion tokens (%(default)s)",
    )

    batch = parser.add_argument_group("Batch API (/v1/files, /v1/batches)")
    batch.add_argument(
        "--batch-processing",
        type=non_negative_seconds,
        default=BatchConfig().in_progress_seconds,
        metavar="SECONDS",
        help="how long a batch stays in_progress before it completes (%(default)s: at once; "
        "the real Batch API takes minutes to 24 hours)",
    )
    batch.add_argument(
        "--batch-expire-share",
        type=share,
        default=BatchConfig().expire_share,
        metavar="SHARE",
        help="share of a batch's requests left unanswered: the batch ends expired (%(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> LLMServerConfig:
    """The configuration the parsed flags describe; raises ValueError on inconsistent values."""
    if args.latency_uniform:
        latency = Latency.uniform(*args.latency_uniform)
    elif args.latency_lognormal:
        latency = Latency.lognormal(*args.latency_lognormal)
    else:
        latency = Latency.fixed(args.latency or 0.0)
    return LLMServerConfig(
        host=args.host,
        port=args.port,
        model=args.model,
        strict_model=args.strict_model,
        api_key=args.api_key,
        seed=args.seed,
        json_schema=getattr(args, "json_schema", True),
        latency=latency,
        faults=Faults(
            rate_429=args.rate_429,
            retry_after=args.retry_after,
            rate_500=args.rate_500,
            rate_503=args.rate_503,
            rate_timeout=args.rate_timeout,
            timeout_hold=args.timeout_hold,
            timeout_mode=args.timeout_mode,
            rate_malformed=args.rate_malformed,
            rate_schema=args.rate_schema,
        ),
        limits=Limits(tpm=args.tpm, rpm=args.rpm, context_tokens=args.context_tokens),
        batch=BatchConfig(
            in_progress_seconds=getattr(args, "batch_processing", 0.0),
            expire_share=getattr(args, "batch_expire_share", 0.0),
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Serve with the flags in ``args`` until SIGINT/SIGTERM; returns the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        say_error("llm-server", str(exc))
        return 2

    def announce(server: LLMServer) -> None:
        print(f"docbus offline LLM server (model {config.model}) at {server.base_url}", flush=True)

    try:
        LLMServer(config).run_forever(ready=announce)
    except OSError as exc:
        say_error("llm-server", f"cannot listen on {config.host}:{config.port}: {exc}")
        return 3 if exc.errno == errno.EADDRINUSE else 1  # in use: try again once it is free
    return 0
