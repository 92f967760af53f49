"""subscriber: the worker that runs handlers on a topic's messages and settles every one.

What a process embedding a worker needs::

    from subscriber import Worker, WorkerOptions, freeze_startup_heap

    worker = Worker(handlers, client=client, store=store, options=WorkerOptions(concurrency=32))
    freeze_startup_heap()
    report = await worker.run()          # until stop(), idle (until_idle) or max_messages

:class:`WorkerReport` counts what happened per handler and :class:`Action`; ``on_outcome``
receives each :class:`DeliveryOutcome` as it happens. Inside: :mod:`subscriber.worker`
(orchestration), :mod:`subscriber.admission` (slots, credits), :mod:`subscriber.breaker` (circuit
breaker), :mod:`subscriber.resumption` (parked messages), :mod:`subscriber.receiver` (the one
Service Bus adapter), :mod:`subscriber.processing` (one delivery), :mod:`subscriber.settlement`
(``decide()``, the one place that decides), :mod:`subscriber.locks`, :mod:`subscriber.parking`,
:mod:`subscriber.dlq`, :mod:`subscriber.received`, :mod:`subscriber.watchdog`.
"""

from __future__ import annotations

from subscriber.processing import DeliveryOutcome
from subscriber.settlement import Action
from subscriber.worker import Worker, WorkerOptions, WorkerReport, freeze_startup_heap

__all__ = [
    "Action",
    "DeliveryOutcome",
    "Worker",
    "WorkerOptions",
    "WorkerReport",
    "freeze_startup_heap",
]
