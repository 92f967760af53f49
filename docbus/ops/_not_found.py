"""Not found: what an operator query raises when the store knows nothing of what was asked.

:class:`NotFound` is a :class:`~docbus.errors.DocbusError` whose message says what is missing
and, where it helps, how to find the right id; the CLI's runner (:mod:`docbus.cli`) shows it as
one line and exit code 1. :class:`NameOne` is the case where several things match and the
command line must say which (``docbus results`` exits 2, a usage error). Raised by
:mod:`docbus.ops.batches`, :mod:`docbus.ops.report`, :mod:`docbus.ops.results` and
:mod:`docbus.ops.dead_letters`.
"""

from __future__ import annotations

from docbus.errors import DocbusError


class NotFound(DocbusError):
    """The batch, document, result version or dead letter asked about is not in the store."""


class NameOne(NotFound):
    """Several things match what was asked (a document's results of several handlers): the
    request must name one; the message says how."""
