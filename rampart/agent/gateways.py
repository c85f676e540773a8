"""Where this agent connects: the gateways it tries in turn (docs/scale-out.md).

Enrolment stores the list the server named (or the one given with ``rampart-agent enroll
--gateway``); ``rampart-agent gateways`` shows or replaces it. The list decides where the
agent connects, never whom it trusts: each gateway must serve the pinned certificate, and
everything sent over it is verified as before.

Invariant: :func:`load` returns at least one ``wss://`` URL, valid by
:func:`rampart.wire.gateways.check_gateway_urls` (or derived from the enrolment server).
"""

from __future__ import annotations

import json
import sqlite3

from rampart.wire.gateways import check_gateway_urls

from .state import AgentState, StateError

#: The meta key of the list (JSON); ``gateway_url`` holds its first entry, as before lists.
LIST_KEY = "gateway_urls"
FIRST_KEY = "gateway_url"


def derived(server_url: str) -> str:
    """The gateway on the API port of the enrolment server (a server without a dedicated one)."""
    return server_url.replace("https://", "wss://", 1).rstrip("/") + "/agent/v1/ws"


def load(st: AgentState) -> list[str]:
    """The gateways to try in turn, in order."""
    raw = st.get_text(LIST_KEY)
    if raw is not None:
        try:
            return check_gateway_urls(json.loads(raw))
        except ValueError as exc:
            raise StateError(f"the stored gateway list is unusable ({exc}): set it again with "
                             "'rampart-agent gateways'") from None
    one = st.get_text(FIRST_KEY)
    if one:
        return [one]
    server = st.get_text("server_url")
    if not server:
        raise StateError("no server is stored: enrol first")
    return [derived(server)]


def save(st: AgentState, db: sqlite3.Connection, urls: list[str]) -> None:
    """Store ``urls`` (checked) as the gateways to try, inside the caller's transaction."""
    urls = check_gateway_urls(urls)
    st.set_many(db, {LIST_KEY: json.dumps(urls), FIRST_KEY: urls[0]})
