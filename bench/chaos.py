"""Chaos suite: thousands of documents through the built-in handlers under faults; one JSON line.

docbus promises that every published document ends as exactly one current result or one dead
letter per handler, under crashes, outages and bad input. This script tries to break that
promise and counts what it finds. Every component runs for real, in its own process
(``bench/_chaos_stack.py``): the offline LLM server (with an API key and about ``--llm-faults``
of its answers 429, 500, 503 or cut-short JSON), the Service Bus emulator and SecantusDB (both
on data directories, so they restart with their state), and ``--workers`` ``docbus worker``
processes running ``handlers.builtin`` (``entities``: three checkpointed LLM steps;
``supplier_risk``: one), as ``docbus demo`` does.

The run publishes two thirds of ``--docs`` (a few of them over 256 KB, sent by claim-check),
starts the workers, then, as the results come in (the schedule is keyed on the share of
documents settled, so it fits any machine's speed; drawn from ``--seed``):

- SIGKILLs a random worker ``--kills`` times, restarting it each time (and restarts any worker
  that exits by itself);
- publishes the last third while the workers run;
- sends the catalogue of bad inputs (``bench/_chaos_inputs.py``): files with one bad line each
  through ``docbus publish --skip-invalid`` (before the workers start) and raw messages
  straight to the topic with the SDK (non-JSON, AMQP value and sequence bodies, deep JSON,
  wrong ``schema_version``, missing fields, a claim-check pointing nowhere, oversized
  properties...), each of which must end as a dead letter with a Mongo record;
- freezes SecantusDB (SIGSTOP, ``--freeze`` seconds, SIGCONT), later SIGKILLs it
  ``--mongo-kills`` times, restarting it on the same port and data each time, and SIGKILLs and
  restarts the emulator the same way.

It then waits until nothing can change any more — every subscription empty and every message
on a dead-letter queue recorded in Mongo — or until ``--timeout``, stops the workers, and
audits (``bench/_chaos_audit.py``, whose ``DEFINITIONS`` go into the JSON line's ``notes``):
per handler ``lost``, ``duplicate_current``, ``done_and_dead``, ``unfinished``,
``left_on_subscription``, ``dlq_without_record``, ``bad_input_unrecorded``, ``steps_redone``
and ``steps_repeated``; and ``calls_without_audit`` (LLM server requests vs audit rows) and
``secrets_in_logs`` (API key, SAS key or a whole document text in any worker or publisher log).
The exit status is 1 when any of the first seven, or ``secrets_in_logs``, is above 0 (so CI
can run ``--short``), and 2 when the run itself broke.

The waits are bounded: the run stops ``--timeout`` seconds into the processing at the latest,
and ends ``DRAIN_WAIT`` seconds after the last progress when DLQ messages stay unrecorded.

    python bench/chaos.py [--docs 3000] [--kills 25] [--seed 1] [--short] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _chaos_audit import (
    Audit,
    BrokerMessage,
    account,
    load_mongo,
    peek_broker,
    raw_outcomes,
    rework,
    scan_logs,
)
from _chaos_inputs import TOPIC, PublisherCase, documents, jsonl, publisher_cases, raw_cases
from _chaos_report import Tally, json_line
from _chaos_stack import (
    PYTHON,
    Child,
    EmulatorProcess,
    LLMServer,
    MongoProcess,
    WorkerPool,
    clean_environment,
)
from pymongo import MongoClient
from rich.console import Console

from docbus.topology import load_topology, write_emulator_config

DATABASE = "chaos"
HANDLERS = {"entities": "entities", "supplier_risk": "supplier-risk"}
"""The built-in handlers and their subscriptions (``handlers.builtin``)."""
DRAIN_WAIT = 75.0
"""Workers drain their DLQs into Mongo every minute: a DLQ message may wait this long."""
LOCK_DURATION = "PT20S"
"""Shorter than the project's PT1M so a killed worker's messages come back within the run."""


# -- the schedule ----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Event:
    """Something done to the system once ``at`` of the expected outcomes are in."""

    at: float
    kind: str
    """``kill_worker``, ``publish_rest``, ``raw_bad_inputs``, ``freeze_mongo``,
    ``kill_mongo`` or ``kill_emulator``."""


def plan_events(rng: random.Random, kills: int, mongo_kills: int = 1) -> list[Event]:
    """The run's schedule: outages at fixed shares of the work (Mongo kills spread over the
    middle of it), worker kills at random shares."""
    fixed = [
        Event(0.15, "publish_rest"),
        Event(0.25, "freeze_mongo"),
        Event(0.35, "raw_bad_inputs"),
        Event(0.65, "kill_emulator"),
    ]
    fixed += [Event(0.45 + 0.4 * i / max(1, mongo_kills), "kill_mongo") for i in range(mongo_kills)]
    return sorted(fixed + [Event(rng.uniform(0.02, 0.92), "kill_worker") for _ in range(kills)])


def _reports(output: str, filename: str, line: int) -> bool:
    """The publisher's output lists ``filename:line`` (or a span ``filename:first-last``
    holding it) as a problem's place, not merely cites it as in "(first at file:1)"."""
    place = re.escape(filename) + r":(\d+)(?:-(\d+))?"
    for found in re.finditer(rf"(?<!at )(?<![\w(]){place}(?![\w)])", output):
        first = int(found.group(1))
        if first <= line <= int(found.group(2) or first):
            return True
    return False


# -- the run ---------------------------------------------------------------------------------


class ChaosRun:
    """One run: inputs, stand-ins, workers, the schedule, and the audit at the end."""

    def __init__(self, options: argparse.Namespace, work: Path, console: Console) -> None:
        self.options, self.work, self.console = options, work, console
        seed = options.seed
        self.plan_rng = random.Random(f"{seed}-plan")
        inputs_rng = random.Random(f"{seed}-inputs")
        secrets_rng = random.Random(f"{seed}-secrets")
        self.api_key = f"sk-chaos-{secrets_rng.getrandbits(128):032x}"
        self.sas_key = f"{secrets_rng.getrandbits(192):048x}"
        main = documents("doc", options.docs, inputs_rng, large=options.large)
        split = len(main) * 2 // 3
        self.batches = {"chaos-a": main[:split], "chaos-b": main[split:]}
        self.bad_files = publisher_cases(inputs_rng)
        self.raw = raw_cases("chaos-raw", inputs_rng)
        self.events = plan_events(self.plan_rng, options.kills, options.mongo_kills)
        self.tally = Tally()
        for d in ("logs", "inputs", "mongo", "servicebus"):
            (work / d).mkdir(parents=True, exist_ok=True)
        self.logs = work / "logs"
        self.expected: list[tuple[str, str]] = []
        self.publishing: list[tuple[str, Child]] = []
        """Main batches being published (batch id, publisher)."""
        self.total = 1
        """Outcomes expected (results or dead letters), the denominator of the progress: set
        once the bad input files are published (their valid lines may not all be sent)."""
        self.texts = [d["text"] for d in main] + [
            d["text"] for case in self.bad_files for d in case.valid.values()
        ]

    # -- setting up ------------------------------------------------------------------------

    def start_stand_ins(self) -> None:
        self.topology_file = self.work / "topology.toml"
        subs = "".join(f'\n[[topics.subscriptions]]\nname = "{s}"\n' for s in HANDLERS.values())
        self.topology_file.write_text(
            f'[defaults]\nmax_delivery_count = 5\nlock_duration = "{LOCK_DURATION}"\n\n'
            f'[[topics]]\nname = "{TOPIC}"\n{subs}'
        )
        topology = load_topology(self.topology_file)
        config = write_emulator_config(topology, self.work / "Config.json")
        self.llm = LLMServer(
            self.logs,
            api_key=self.api_key,
            seed=self.options.seed,
            latency=self.options.llm_latency,
            fault_rate=self.options.llm_faults,
        )
        self.llm.start()
        self.mongo = MongoProcess(self.work / "mongo")
        self.mongo.start()
        self.emulator = EmulatorProcess(
            self.logs, config=config, data_dir=self.work / "servicebus", sas_key=self.sas_key
        )
        self.emulator.start()
        self.env = clean_environment() | {
            "DOCBUS_SERVICEBUS__CONNECTION_STRING": self.emulator.connection_string,
            "DOCBUS_MONGODB__URI": self.mongo.uri,
            "DOCBUS_MONGODB__DATABASE": DATABASE,
            "DOCBUS_LLM__BASE_URL": self.llm.base_url,
            "DOCBUS_LLM__API_KEY": self.api_key,
            "DOCBUS_LLM__MODEL": "docbus-offline",
            # Bounded waits, so the run ends in reasonable time (the defaults are 30 s / 300 s).
            "DOCBUS_WORKER__SHUTDOWN_GRACE": "10",
            "DOCBUS_WORKER__RETRY_BACKOFF_MAX": "20",
            "COLUMNS": "250",  # publisher tables: file:line on one line
        }
        self.monitor: MongoClient[dict[str, Any]] = MongoClient(
            self.mongo.uri, serverSelectionTimeoutMS=2000, socketTimeoutMS=5000
        )

    def publisher(self, name: str, path: Path, batch_id: str) -> Child:
        """``docbus publish --skip-invalid`` started in a process of its own."""
        fmt = "csv" if path.suffix == ".csv" else "jsonl"
        child = Child(
            f"publish-{name}",
            [PYTHON, "-m", "docbus", "publish", path.name, "--topic", TOPIC, "--batch-id",
             batch_id, "--format", fmt, "--id-field", "id", "--skip-invalid",
             "--topology", str(self.topology_file)],
            self.logs,
            env=self.env,
            cwd=path.parent,  # relative names: the publisher's report then says "file:line"
        )  # fmt: skip
        child.start()
        return child

    def finished(self, child: Child) -> tuple[int, str]:
        """Wait for a publisher; its exit status and output."""
        assert child.process is not None
        status = child.process.wait()
        child.stop(grace=0)
        self.tally.publisher_logs.append(child.logs[-1])
        return status, child.logs[-1].read_text(errors="replace")

    def start_batch(self, batch_id: str) -> None:
        """Start publishing one of the main batches; :meth:`check_batches` collects it."""
        path = self.work / "inputs" / f"{batch_id}.jsonl"
        path.write_bytes(jsonl(self.batches[batch_id]))
        self.publishing.append((batch_id, self.publisher(batch_id, path, batch_id)))
        # Valid documents all: whatever the publisher says, each must end somewhere.
        self.expected += [(batch_id, d["id"]) for d in self.batches[batch_id]]

    def check_batches(self, wait: bool = False) -> bool:
        """Collect the main batches' publishers that have exited; True once none is left."""
        for batch_id, child in list(self.publishing):
            assert child.process is not None
            if not wait and child.process.poll() is None:
                continue
            self.publishing.remove((batch_id, child))
            status, _ = self.finished(child)
            if status != 0:
                self.tally.publish_failures.append(f"{batch_id}: exit {status}")
                self.console.print(f"[red]publishing {batch_id} exited {status}[/]")
        return not self.publishing

    def publish_bad_files(self, at_once: int = 5) -> None:
        """Every bad input file, each by its own publisher (a few at a time)."""
        for start in range(0, len(self.bad_files), at_once):
            wave = []
            for case in self.bad_files[start : start + at_once]:
                path = self.work / "inputs" / case.filename
                path.write_bytes(case.content)
                wave.append((case, self.publisher(case.kind, path, case.batch_id)))
            for case, child in wave:
                self.tally.publishers.append(self._judge(case, *self.finished(child)))

    def _judge(self, case: PublisherCase, status: int, output: str) -> dict[str, Any]:
        """Was the bad line reported as file:line; which valid lines must reach the workers?

        A valid line is excused when the publisher named it (its file:line, or its id in its
        table of documents not sent), or when the whole run failed loudly (an ``error:`` line
        or a traceback): the user was told. Every other valid line must end as a result or a
        dead letter like any document, so one swallowed without a word (say, into a malformed
        neighbour) counts as lost.
        """
        crashed = "Traceback (most recent call last)" in output
        failed = crashed or "error:" in output or status not in (0, 1)
        listed = "Not sent" in output  # the table of documents the broker refused, by id
        named = {
            line
            for line, doc in case.valid.items()
            if _reports(output, case.filename, line) or (listed and str(doc["id"]) in output)
        }
        verdict: dict[str, Any] = {
            "kind": case.kind,
            "exit": status,
            "bad_line_reported": all(_reports(output, case.filename, n) for n in case.bad_lines),
            "crashed": crashed,
            "failed": failed,
            "valid_not_sent": len(case.valid) if failed else len(named),
        }
        if not failed:
            self.expected += [
                (case.batch_id, str(doc["id"]))
                for line, doc in case.valid.items()
                if line not in named
            ]
        return verdict

    def send_raw(self) -> None:
        from azure.servicebus import ServiceBusClient
        from azure.servicebus.exceptions import ServiceBusError

        with (
            ServiceBusClient.from_connection_string(self.emulator.connection_string) as client,
            client.get_topic_sender(TOPIC) as sender,
        ):
            for case in self.raw:
                try:
                    sender.send_messages(case.message())
                    self.tally.raw_sent += 1
                except (ServiceBusError, ValueError, TypeError) as exc:
                    self.tally.raw_refused[case.kind] = f"{type(exc).__name__}: {exc}"[:200]

    # -- the schedule ----------------------------------------------------------------------

    def progress(self) -> float | None:
        """Share of the expected outcomes in (results + dead letters); None when Mongo is out."""
        try:
            db = self.monitor[DATABASE]
            done = db["current_results"].count_documents({})
            done += db["dead_letters"].estimated_document_count()
        except Exception:
            return None
        return done / self.total

    def fire(self, event: Event) -> None:
        rng = self.plan_rng
        self.console.print(f"[cyan]{event.kind}[/] at {event.at:.0%}")
        if event.kind == "kill_worker":
            index = rng.randrange(len(self.pool.workers))
            self.pool.kill(index)
            time.sleep(rng.uniform(0.0, 2.0))
            self.pool.restart(index)
        elif event.kind == "publish_rest":
            self.start_batch("chaos-b")  # in the background: the schedule goes on meanwhile
        elif event.kind == "raw_bad_inputs":
            self.send_raw()
        elif event.kind == "freeze_mongo":
            self.mongo.freeze()
            time.sleep(self.options.freeze)
            self.mongo.thaw()
        elif event.kind == "kill_mongo":
            self.mongo.kill()
            time.sleep(rng.uniform(2.0, 4.0))
            self.mongo.start()
        elif event.kind == "kill_emulator":
            self.emulator.kill()
            time.sleep(rng.uniform(2.0, 4.0))
            self.emulator.start()
        self.tally.count(event.kind)

    def supervise(self) -> None:
        """Restart workers that exited by themselves, as a process supervisor would."""
        for index, worker in enumerate(self.pool.workers):
            if worker.process is not None and worker.process.poll() is not None:
                self.tally.worker_exits.append(f"{worker.name}: exit {worker.process.returncode}")
                self.pool.restart(index)

    def leftovers(self) -> tuple[int, int] | None:
        """Messages still on the subscriptions, and messages on their DLQs without a Mongo
        record; None while the broker or Mongo cannot say."""
        try:
            left = peek_broker(self.emulator.connection_string, TOPIC, HANDLERS.values())
            found = self.monitor[DATABASE]["dead_letters"].find({}, {"_id": 1})
            recorded = {str(d["_id"]) for d in found}
        except Exception:
            return None
        waiting = sum(not m.dead_letter for m in left)
        unrecorded = sum(
            m.dead_letter and f"{m.subscription}@{m.message_id}" not in recorded for m in left
        )
        return waiting, unrecorded

    def run_schedule(self) -> None:
        """Fire the events as the work progresses, until nothing can change any more: the
        subscriptions are empty and every DLQ message is recorded (or has stayed unrecorded
        for longer than the workers take to drain their DLQs)."""
        pending = list(self.events)
        started = time.monotonic()
        deadline = started + self.options.timeout
        last_value, last_change, last_check = -1.0, started, 0.0
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            self.supervise()
            value = self.progress()
            if value is not None and value != last_value:
                last_value, last_change = value, now
                self.console.print(f"progress {value:.1%} ({now - started:.0f} s)", end="\r")
            stalled = now - last_change > self.options.stall
            if pending and value is not None and (pending[0].at <= value or stalled):
                self.fire(pending.pop(0))
                last_change = time.monotonic()
                continue
            if now > deadline:
                self.tally.stopped_because = f"timeout ({self.options.timeout:g} s)"
                return
            published = self.check_batches()
            musts_done = published and not any(
                e.kind in ("publish_rest", "raw_bad_inputs") for e in pending
            )
            if not musts_done or not (stalled or (value or 0) >= 1.0) or now - last_check < 10:
                continue
            last_check = now
            left = self.leftovers()
            if left is None or left[0] > 0:
                continue
            if left[1] == 0:
                self.tally.stopped_because = "settled: subscriptions and DLQs accounted for"
                return
            if now - last_change > DRAIN_WAIT:
                self.tally.stopped_because = (
                    f"quiet: subscriptions empty, {left[1]} DLQ message(s) still without a "
                    f"record after {DRAIN_WAIT:g} s without progress"
                )
                return

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """The whole run; its JSON line."""
        t0 = time.monotonic()
        timings = self.tally.timings
        try:
            self.start_stand_ins()
            timings["start_s"] = time.monotonic() - t0
            # Published before the workers start, so that the schedule, keyed on the share of
            # the work done, spreads the faults over the processing.
            self.console.print(f"publishing {len(self.bad_files)} bad input files and batch a")
            self.publish_bad_files()
            main_documents = sum(len(docs) for docs in self.batches.values())
            self.total = (len(self.expected) + main_documents + len(self.raw)) * len(HANDLERS)
            self.start_batch("chaos-a")
            self.check_batches(wait=True)
            timings["publish_s"] = time.monotonic() - t0 - timings["start_s"]
            self.pool = WorkerPool(
                self.options.workers,
                self.logs,
                env=self.env,
                concurrency=self.options.concurrency,
                topology=self.topology_file,
            )
            t1 = time.monotonic()
            self.pool.start()
            self.run_schedule()
            self.check_batches(wait=True)
            timings["processing_s"] = time.monotonic() - t1
            self.tally.workers_killed_at_stop = self.pool.stop(grace=30)
            t1 = time.monotonic()
            audit = self.audit()
            timings["audit_s"] = time.monotonic() - t1
        finally:
            self.shutdown()
        options = self.options
        settings = (
            f"lock {LOCK_DURATION}, 5 deliveries, worker backoff max 20 s, shutdown grace 10 s, "
            f"offline LLM at {options.llm_latency:g} s per call with {options.llm_faults:.0%} "
            f"faults"
        )
        return json_line(
            options,
            self.tally,
            audit,
            documents=len(self.expected),
            raw_kinds=len(self.raw),
            settings=settings,
            wall=time.monotonic() - t0,
        )

    def shutdown(self) -> None:
        for name in ("pool", "emulator", "mongo"):
            part = getattr(self, name, None)
            if part is None:
                continue
            try:
                part.stop(30) if name == "pool" else part.stop()
            except Exception as exc:  # keep stopping the others
                self.console.print(f"[red]stopping {name}: {exc}[/]")
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.child.stop(grace=10)
        monitor = getattr(self, "monitor", None)
        if monitor is not None:
            monitor.close()

    # -- the audit -------------------------------------------------------------------------

    def audit(self) -> Audit:
        """Count what became of everything (the workers have stopped)."""
        broker: list[BrokerMessage] = peek_broker(
            self.emulator.connection_string, TOPIC, HANDLERS.values()
        )
        mongo = load_mongo(self.mongo.uri, DATABASE)
        with urllib.request.urlopen(self.llm.admin_url + "/stats", timeout=30) as response:
            stats: dict[str, Any] = json.load(response)
        unrecorded = raw_outcomes(self.raw, self.tally.raw_refused, HANDLERS, mongo)
        per_handler = {}
        for handler, subscription in HANDLERS.items():
            counts = account(handler, subscription, self.expected, mongo, broker)
            counts.bad_input_unrecorded = len(unrecorded[handler])
            if unrecorded[handler]:
                counts.examples["bad_input_unrecorded"] = unrecorded[handler][:10]
            counts.rework = rework(handler, mongo)
            per_handler[handler] = counts
        secrets = {"LLM API key": self.api_key, "SAS key": self.sas_key}
        scan = scan_logs(self.pool.logs + self.tally.publisher_logs, secrets, self.texts)
        stand_ins = scan_logs(self.emulator.child.logs + self.llm.child.logs, {}, [])
        return Audit(per_handler, stats, mongo.audit_rows, scan, stand_ins.tracebacks)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, help="documents (3000; --short: 150)")
    parser.add_argument("--kills", type=int, help="worker SIGKILLs (25; --short: 5)")
    parser.add_argument("--mongo-kills", type=int, help="SecantusDB SIGKILLs (2; --short: 1)")
    parser.add_argument("--short", action="store_true", help="a run of about a minute, for CI")
    parser.add_argument("--seed", type=int, default=1, help="seed of everything drawn (1)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (3)")
    parser.add_argument("--concurrency", type=int, default=16, help="handlers per worker (16)")
    parser.add_argument("--large", type=int, help="documents over 256 KB (3; --short: 1)")
    parser.add_argument("--freeze", type=float, help="seconds Mongo is frozen (10; --short: 5)")
    parser.add_argument("--llm-latency", type=float, default=0.05, help="seconds per call (0.05)")
    parser.add_argument("--llm-faults", type=float, default=0.05, help="faulty answers (0.05)")
    parser.add_argument("--timeout", type=float, help="seconds of processing at most (1800; 300)")
    parser.add_argument(
        "--stall", type=float, default=30.0, help="seconds without progress before the "
        "next scheduled fault fires anyway, and the end is checked (30)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", type=Path, help="keep data and logs in this (new or empty) directory"
    )
    options = parser.parse_args(argv)
    short = options.short
    for name, full, quick in (
        ("docs", 3000, 150),
        ("kills", 25, 5),
        ("mongo_kills", 2, 1),
        ("large", 3, 1),
        ("freeze", 10.0, 5.0),
        ("timeout", 1800.0, 300.0),
    ):
        if getattr(options, name) is None:
            setattr(options, name, quick if short else full)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    console = Console(stderr=True)
    if options.keep is not None:
        work = options.keep.resolve()
        if work.exists() and any(work.iterdir()):
            console.print(f"chaos: --keep {work}: the directory must be new or empty")
            return 2
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="docbus-chaos-"))
    try:
        line = ChaosRun(options, work, console).run()
    except Exception as exc:
        # The run itself broke (a stand-in that would not restart, say): still one JSON
        # line, so CI shows why, and a status apart from "counts above 0".
        console.print_exception()
        line = {"bench": "chaos", "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(line), flush=True)
        return 2
    finally:
        if options.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(line), flush=True)
    return 0 if line["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
