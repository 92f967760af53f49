"""The handler author's surface: a few names, no delivery state on the context, ``ctx.llm``
typed so ``extract`` keeps its model type, and no ``openai`` import for a handler without LLM."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import handlers
from handlers import Context, handler, run_handler
from handlers.runtime import delivery_of

ROOT = Path(__file__).resolve().parents[2]

AUTHOR_NAMES = {
    "LLM",
    "Context",
    "DeadLetter",
    "Document",
    "OverBudget",
    "Retry",
    "SystemicFailure",
    "handler",
    "run_handler",
    "step",
}


def test_the_package_exports_what_an_author_needs_and_no_worker_name() -> None:
    assert set(handlers.__all__) == AUTHOR_NAMES


async def test_the_context_carries_no_delivery_state() -> None:
    seen: list[Context] = []

    @handler(topic="t", subscription="s")
    async def keep(doc: object, ctx: Context) -> dict[str, bool]:
        seen.append(ctx)
        return {"ok": True}

    await run_handler(keep, "some text")
    ctx = seen[0]
    public = {name for name in [*vars(ctx), *dir(type(ctx))] if not name.startswith("_")}
    internal = {"checkpoint_cache", "checkpoints_read", "write_behind", "step_runs", "writes"}
    assert public & (internal | {"attempt"}) == set()
    assert delivery_of(ctx).checkpoint_cache is None  # the runtime's, behind the context


def test_the_bound_llm_uses_no_private_member_of_the_client() -> None:
    tree = ast.parse((ROOT / "handlers/llm/bound.py").read_text(encoding="utf-8"))
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "client"
    ]
    assert private == []


def test_extract_keeps_the_model_type_for_mypy(tmp_path: Path) -> None:
    sample = tmp_path / "typed_handler.py"
    sample.write_text(
        textwrap.dedent(
            """
            from typing import assert_type
            from pydantic import BaseModel
            from handlers import Context, Document, handler

            class Invoice(BaseModel):
                total: float

            @handler(topic="t", subscription="s")
            async def read(doc: Document, ctx: Context) -> Invoice:
                assert ctx.llm is not None
                invoice = await ctx.llm.extract(Invoice, doc.text)
                assert_type(invoice, Invoice)
                return invoice
            """
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", str(sample)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_handler_without_llm_calls_never_imports_openai() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        import handlers, handlers.llm, handlers.builtin
        from handlers import handler, run_handler

        @handler(topic="t", subscription="s")
        async def count(doc, ctx):
            return {"chars": len(doc.text)}

        assert asyncio.run(run_handler(count, "hello")) == {"chars": 5}
        print("openai" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
