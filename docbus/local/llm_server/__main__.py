"""``python -m docbus.local.llm_server``: the offline LLM server without the umbrella CLI."""

from __future__ import annotations

from docbus.local.llm_server.cli import serve_main

raise SystemExit(serve_main())
