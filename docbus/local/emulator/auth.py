"""Shared access signatures: checking the CBS tokens clients put before attaching links.

By default the emulator accepts any token, as Microsoft's emulator does; given keys
(``docbus emulator --sas-key NAME=KEY``) it checks each token's signature, expiry and resource
the way Service Bus does, so a wrong key fails with the SDK's authentication error. Used by
:mod:`docbus.local.emulator.connection` for ``$cbs`` put-token requests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse


def verify_sas_token(token: str, audience: str, keys: dict[str, str]) -> str | None:
    """None if ``token`` is a valid, unexpired SAS token for ``audience``; else the problem."""
    if not token.startswith("SharedAccessSignature "):
        return "The token is not a SharedAccessSignature."
    parts = dict(
        item.split("=", 1)
        for item in token[len("SharedAccessSignature ") :].split("&")
        if "=" in item
    )
    resource, signature = parts.get("sr", ""), urllib.parse.unquote(parts.get("sig", ""))
    expiry, key_name = parts.get("se", ""), parts.get("skn", "")
    key = keys.get(key_name)
    if key is None:
        return f"Unknown SharedAccessKeyName '{key_name}'."
    expected = base64.b64encode(
        hmac.new(key.encode(), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    ).decode()
    if not hmac.compare_digest(expected, signature):
        return "The token's signature does not match the key."
    if not expiry.isdigit() or int(expiry) < time.time():
        return "The token has expired."
    if urllib.parse.unquote(resource).lower().rstrip("/") not in audience.lower():
        return "The token's resource does not cover the audience."
    return None
