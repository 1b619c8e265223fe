"""`--notify URL`: one message per run through Apprise (the optional extra `notify`), sent by a child process
that the run kills at its time limit — `python -m batchgen.notify`, reading {"urls", "title", "body", "type"} as
JSON on stdin (never argv: other users see argv in `ps`) and printing one JSON line of what happened.

The child never reads ~/.netrc (requests would, for any URL without credentials): NETRC points at an empty
file and requests' netrc lookup is switched off. Its proxy and CA come from its environment (finish.py sets
HTTPS_PROXY/HTTP_PROXY and REQUESTS_CA_BUNDLE/SSL_CERT_FILE from the run's settings).

Notify URLs carry tokens: they are secrets. Nothing here prints one; `url_secrets` gives the parts of a URL a
mask must cover (the whole, its credentials, its path segments, its query values) for what Apprise logs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MIN_PART = 6  # shorter parts (`json`, `443`, `slack`) are no secret, and masking them would mangle the text


def available() -> bool:
    """Whether Apprise can be imported (the `notify` extra is installed)."""
    import importlib.util

    return importlib.util.find_spec("apprise") is not None


def url_secrets(url: str) -> list[str]:
    """The parts of a notify URL that a mask must cover, longest first."""
    parts = {url}
    try:
        split = urlsplit(url)
    except ValueError:
        return [url]
    parts |= {split.netloc, split.username or "", split.password or "", split.hostname or ""}
    parts |= set(split.path.split("/")) | {unquote(p) for p in split.path.split("/")}
    parts |= {value for _, value in parse_qsl(split.query)} | {split.query, split.fragment}
    return sorted((p for p in parts if len(p) >= MIN_PART), key=len, reverse=True)


def _no_netrc() -> None:
    """requests looks up ~/.netrc for every URL without credentials (Session.trust_env): not in this child."""
    import requests.sessions

    requests.sessions.get_netrc_auth = lambda *args, **kwargs: None  # type: ignore[attr-defined,unused-ignore]


class _Last(logging.Handler):
    """Keeps Apprise's last few warnings and errors: the reason a message was not taken."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines = [*self.lines[-4:], record.getMessage()[:500]]


def child(request: dict[str, Any]) -> dict[str, Any]:
    """Send one message to every URL; what happened, for the parent to log (masked and escaped there)."""
    try:
        import apprise
    except ImportError:
        return {"ok": False, "problem": "Apprise is not installed: pip install 'batchgen[notify]'"}
    _no_netrc()
    last = _Last()
    logging.getLogger("apprise").addHandler(last)
    sender = apprise.Apprise()
    added = sum(1 for url in request["urls"] if sender.add(url))
    if added < len(request["urls"]):
        unusable = len(request["urls"]) - added
        return {"ok": False, "problem": f"{unusable} of {len(request['urls'])} notify URLs are not Apprise URLs"}
    kinds = {"success": apprise.NotifyType.SUCCESS, "warning": apprise.NotifyType.WARNING}
    ok = sender.notify(
        title=request["title"], body=request["body"], notify_type=kinds.get(request["type"], apprise.NotifyType.FAILURE)
    )
    return {"ok": bool(ok), "sent_to": added, "problem": None if ok else (last.lines[-1:] or ["not sent"])[0]}


def main() -> int:
    request = json.loads(sys.stdin.buffer.read(1024 * 1024))
    os.environ["NETRC"] = os.devnull
    try:
        result = child(request)
    except Exception as exc:  # a bug in a plugin must still come back as one line, not a traceback
        result = {"ok": False, "problem": f"{type(exc).__name__}: {exc}"[:500]}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
