"""Steps: checkpointed units of a handler's work, so a redelivery never pays for them twice.

``await ctx.step("entities", fn, *args, **kwargs)`` (or an ``@step("entities")`` function called
with the context first) runs ``await fn(*args, **kwargs)`` once per (document, handler, handler
version, step, input hash) and keeps its output in the ``checkpoints`` collection through
:meth:`docbus.store.Store.put_checkpoint`. When the message comes back — a crash, a retry, a
replay — the stored output is returned without calling ``fn``, so a crash after step 2 of 3
re-runs step 3 only; the same step on the same input twice in one delivery runs once. In the
worker the checkpoint is acknowledged behind the handler, before its result is stored
(:mod:`handlers.writes`); a crash in that moment re-runs the step, as a crash during a
synchronous write would, while an outage of the store only delays it (it is held and retried,
and a redelivery in the same process meanwhile reuses the output on its way). The input hash
covers the step name and the arguments in canonical JSON (pydantic models dumped; a model
*class* counts by its name and JSON schema, a function by its name, the context not at all), so
other input, a changed output model or a bumped handler version computes afresh.

Outputs are stored as JSON text with what they were: a pydantic model (and a list of one model
class) is stored with its class path and re-validated on load; anything else must be JSON-able
and comes back in its JSON form — on the first run too, so a handler sees the same values
whether a step ran or was replayed. While a step runs, :func:`current_step` names it (the LLM
client writes it into its audit rows; :func:`current_step_id` is its checkpoint key, which
batch-mode requests are keyed by), and an exception leaving a step carries ``exc.step``.
Each running step is counted by the delivery's batch-mode round (:mod:`handlers.batch_round`),
so a delivery parks for a provider batch only once every running step waits for one.
Neighbours: :mod:`handlers.context` (``ctx.step``), :mod:`handlers.llm` (the calls inside).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from docbus.store import Checkpoint, StoreError
from handlers.batch_round import round_of
from handlers.delivery import delivery_of
from handlers.discovery import loaded_module, portable_module_name
from handlers.errors import Retry
from handlers.writes import backlog_of, checkpoint_on_its_way, durably

if TYPE_CHECKING:
    from handlers.context import Context

__all__ = ["current_step", "current_step_id", "run_step", "step"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

FORMAT = "docbus.step/1"

_current: ContextVar[str | None] = ContextVar("docbus_current_step", default=None)
_current_id: ContextVar[str | None] = ContextVar("docbus_current_step_id", default=None)


def current_step() -> str | None:
    """The name of the step the running task is inside, if any (the innermost one)."""
    return _current.get()


def current_step_id() -> str | None:
    """The checkpoint key id of the step the running task is inside (its identity: document,
    handler, version, step and input), if any; batch-mode requests are keyed by it."""
    return _current_id.get()


async def run_step(
    ctx: Context,
    name: str,
    fn: Callable[P, Awaitable[T]],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``await fn(*args, **kwargs)`` as the checkpointed step ``name`` of ``ctx``'s handler."""
    return await _run(ctx, name, functools.partial(fn, *args, **kwargs), args, kwargs)


def step(
    name: str,
) -> Callable[
    [Callable[Concatenate[Context, P], Awaitable[T]]],
    Callable[Concatenate[Context, P], Awaitable[T]],
]:
    """Make ``async def fn(ctx, *args, **kwargs)`` a checkpointed step named ``name``.

    The context is not part of the input hash; the other arguments are.
    """
    _check_name(name)

    def decorate(
        fn: Callable[Concatenate[Context, P], Awaitable[T]],
    ) -> Callable[Concatenate[Context, P], Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(ctx: Context, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return await _run(ctx, name, functools.partial(fn, ctx, *args, **kwargs), args, kwargs)

        return wrapper

    return decorate


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a step needs a non-empty name")


async def _run(
    ctx: Context,
    name: str,
    call: Callable[[], Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    _check_name(name)
    from handlers.context import Context  # a runtime import: context imports this module

    def hashable(value: Any) -> Any:
        return "<context>" if isinstance(value, Context) else value  # per delivery: not input

    try:
        step_input = to_jsonable_python(
            {
                "step": name,
                "args": [hashable(arg) for arg in args],
                "kwargs": {key: hashable(value) for key, value in kwargs.items()},
            },
            fallback=_input_fallback,
        )
    except (PydanticSerializationError, TypeError) as exc:
        raise TypeError(f"step {name!r}: its arguments are not JSON-able: {exc}") from exc
    key = ctx.checkpoint_key(name, step_input)
    earlier = delivery_of(ctx).step_runs.get(key.id)
    if earlier is not None:
        # The same step on the same input, already run (or running) in this delivery: its
        # output, not a second call (nor, behind, a checkpoint conflict with itself).
        return decode_output(await asyncio.shield(earlier))
    run: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    delivery_of(ctx).step_runs[key.id] = run
    store = ctx.store
    stale = False
    token = _current.set(name)
    id_token = _current_id.set(key.id)
    batch_round = round_of(ctx)
    step_run = batch_round.enter()  # counted while it runs: batch mode's round waits for it
    try:
        if store is not None:
            stored = await _stored_checkpoint(ctx, store, key)
            if stored is not None:
                try:
                    value: T = decode_output(stored.output)
                except _Unloadable as exc:
                    ctx.logger.warning(
                        "step %s: stored output unusable (%s); runs again", name, exc
                    )
                    stale = True
                else:
                    ctx.logger.debug("step %s: replayed from its checkpoint", name)
                    run.set_result(stored.output)
                    return value
        output = await call()
        encoded = encode_output(output, name)
    except BaseException as exc:
        _mark(exc, name)
        _failed_run(ctx, key.id, run, exc)
        raise
    finally:
        batch_round.exit(step_run)
        _current_id.reset(id_token)
        _current.reset(token)
    if store is not None and delivery_of(ctx).writes.behind:
        # Sent now, acknowledged later (handlers.writes): after the audit rows of this step's
        # calls, before the result. The handler goes on with its next step meanwhile; until
        # it is stored, another delivery of the document in this process finds it on its way.
        write = delivery_of(ctx).writes.start(
            _store_checkpoint(ctx, store, key, encoded, replace=stale, adopt=False),
            after_earlier=True,
        )
        checkpoint_on_its_way(store, _owner(ctx), key.id, encoded, write)
    elif store is not None:
        try:
            encoded = await _store_checkpoint(ctx, store, key, encoded, replace=stale, adopt=True)
        except BaseException as exc:
            _failed_run(ctx, key.id, run, exc)
            raise
    run.set_result(encoded)
    return decode_output(encoded)


def _failed_run(ctx: Context, key_id: str, run: asyncio.Future[Any], exc: BaseException) -> None:
    """Forget a step run that failed (a later call may try again); a repeat waiting on it
    gets the same error."""
    delivery_of(ctx).step_runs.pop(key_id, None)
    if isinstance(exc, asyncio.CancelledError):
        run.cancel()
    else:
        run.set_exception(exc)
        run.exception()  # retrieved: no "never retrieved" warning when nobody waits


async def _store_checkpoint(
    ctx: Context, store: Any, key: Any, encoded: Any, *, replace: bool, adopt: bool
) -> Any:
    """Store a step's output; return what is stored for its key — the output given, or what a
    concurrent delivery of the same message stored first (``adopt``; else that raises)."""
    stored = await durably(
        store,
        lambda: store.put_checkpoint(key, encoded, batch_id=ctx.batch_id, replace=replace),
        f"checkpoint of step {key.step}",
    )
    if stored:
        return encoded
    winner = await store.get_checkpoint(key)
    if winner is None or winner.output == encoded:
        return encoded
    if adopt:
        return winner.output
    # This delivery has gone on with its own output: run again, on the stored outputs, so
    # the result agrees with the checkpoints.
    raise Retry(after=0, reason=f"CheckpointConflict in step {key.step}")


def _input_fallback(value: Any) -> Any:
    """The hashable form of step arguments JSON has no form for."""
    if isinstance(value, type) and issubclass(value, BaseModel):
        # The schema is part of the input: changing the model recomputes the step.
        # By qualified name, not module path: a handler module imported by file path in one
        # worker and by dotted name in another must still find the same checkpoints.
        return {"model": value.__qualname__, "schema": _schema(value)}
    if isinstance(value, type) or callable(value):
        return {"callable": getattr(value, "__qualname__", repr(value))}
    raise TypeError(f"{type(value).__name__} is not JSON-able")


async def _stored_checkpoint(ctx: Context, store: Any, key: Any) -> Any:
    """The stored output for ``key``: all of a delivery's checkpoints are read in one query,
    on its first step (or as its message arrived, by the worker: ``Delivery.checkpoints_read``),
    and kept with the delivery for the steps after it."""
    delivery = delivery_of(ctx)
    cache = delivery.checkpoint_cache
    if cache is None:
        started, delivery.checkpoints_read = delivery.checkpoints_read, None
        if started is not None:
            with contextlib.suppress(StoreError):  # read again below, and fail there if so
                cache = await started
        if cache is None:
            cache = await store.checkpoints_of(ctx.doc_id, ctx.handler_name, ctx.handler_version)
        delivery.checkpoint_cache = cache
    stored = cache.get(key.id)
    if stored is None:
        on_its_way = backlog_of(store).checkpoint(_owner(ctx), key.id)
        if on_its_way is not None:
            # Finished by an earlier delivery in this process, still on its way to the store
            # (held through an outage, say): this delivery's result waits for it too.
            output, write = on_its_way
            delivery_of(ctx).writes.follow(write)
            return Checkpoint(output, datetime.now(UTC))
    if stored is None and cache:
        # Not among what was there when they were read: written by a concurrent
        # delivery since, perhaps; ask the store rather than recompute.
        stored = await store.get_checkpoint(key)
    return stored


def _owner(ctx: Context) -> tuple[str, str, str]:
    """Whose checkpoints a delivery reads and writes: document, handler, handler version."""
    return (ctx.doc_id, ctx.handler_name, ctx.handler_version)


@functools.lru_cache(maxsize=256)
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema, built once per class (it is part of every step's input hash)."""
    return model.model_json_schema()


def _mark(exc: BaseException, name: str) -> None:
    """Let the worker say which step a failure happened in (innermost step wins)."""
    if getattr(exc, "step", None) is None:
        with contextlib.suppress(AttributeError):  # exceptions with __slots__
            exc.step = name  # type: ignore[attr-defined]


class _Unloadable(Exception):
    """A stored step output that cannot be turned back into a value."""


def encode_output(value: Any, name: str = "step") -> dict[str, Any]:
    """The stored form of a step's output."""
    if isinstance(value, BaseModel):
        return {
            "format": FORMAT,
            "kind": "model",
            "class": _class_path(type(value)),
            "json": value.model_dump_json(),
        }
    if (
        isinstance(value, list | tuple)
        and value
        and isinstance(value[0], BaseModel)
        and all(type(item) is type(value[0]) for item in value)
    ):
        return {
            "format": FORMAT,
            "kind": "models",
            "class": _class_path(type(value[0])),
            "json": "[" + ",".join(item.model_dump_json() for item in value) + "]",
        }
    try:
        text = json.dumps(to_jsonable_python(value), ensure_ascii=False, allow_nan=False)
    except (PydanticSerializationError, ValueError) as exc:
        raise TypeError(
            f"step {name!r} returned {type(value).__name__}, which cannot be checkpointed: "
            "return a pydantic model, a list of one model class, or JSON-able data"
        ) from exc
    return {"format": FORMAT, "kind": "json", "json": text}


def decode_output(stored: Any) -> Any:
    """A step's output from its stored form; raises :class:`_Unloadable` when it cannot be."""
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise _Unloadable("not a docbus step output")
    kind, text = stored.get("kind"), stored.get("json")
    if not isinstance(text, str):
        raise _Unloadable("no JSON text")
    if kind == "json":
        return json.loads(text)
    cls = _load_class(str(stored.get("class")))
    try:
        if kind == "model":
            return cls.model_validate_json(text)
        if kind == "models":
            return [cls.model_validate(item) for item in json.loads(text)]
    except (ValidationError, ValueError) as exc:
        raise _Unloadable(f"{cls.__name__} no longer validates it: {exc}") from exc
    raise _Unloadable(f"unknown kind {kind!r}")


def _class_path(cls: type) -> str:
    # portable: a worker started with the handler file's path and one started with its
    # module name store the same path, and each loads what the other stored
    return f"{portable_module_name(cls.__module__)}:{cls.__qualname__}"


def _load_class(path: str) -> type[BaseModel]:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = loaded_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise _Unloadable(f"class {path} not found") from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise _Unloadable(f"{path} is not a pydantic model")
    return obj
