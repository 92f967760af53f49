"""``python -m docbus`` runs the umbrella CLI."""

from docbus.cli import main

raise SystemExit(main())
