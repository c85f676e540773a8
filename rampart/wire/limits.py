"""Protocol limits: one constant for each bound both sides of the agent link enforce.

Invariant: the server and the agent read these same names, so a limit can
never agree by coincidence; the server may configure a lower frame limit,
never a higher one than an agent accepts.
"""

from __future__ import annotations

from typing import Final

from rampart.trust import DEFAULT_LIMITS, merkle

__all__ = [
    "JOB_ID_PATTERN", "MAX_DETAIL_CHARS", "MAX_ENVELOPES", "MAX_MESSAGE_BYTES", "MAX_PAYLOADS",
    "MAX_PROOF_HASHES", "MAX_SEQ", "LISTED_DEVICES_UP_TO",
]

#: Largest WebSocket message (one JSON text frame), either direction.
MAX_MESSAGE_BYTES: Final = 4 << 20
#: Characters of a refusal's ``detail`` (``error``, ``check-ack``).
MAX_DETAIL_CHARS: Final = 300
#: Envelopes in one ``roots`` or ``revocations`` message.
MAX_ENVELOPES: Final = 4096
#: Named payloads of one job (the trust core's own bound).
MAX_PAYLOADS: Final = DEFAULT_LIMITS.max_payloads
#: Hashes in one inclusion or consistency proof (the Merkle log's own bound).
MAX_PROOF_HASHES: Final = merkle.MAX_PROOF_LEN
#: Largest outbox sequence number of a script check result.
MAX_SEQ: Final = 1 << 62
#: A job id as the trust core mints it.
JOB_ID_PATTERN: Final = r"^job-[0-9a-z]{16,64}$"
#: Up to this many devices a grant or job lists them; beyond, its signers commit a device set
#: (``trust.DeviceSet``) and each device gets its own proof, so messages stay constant-size.
LISTED_DEVICES_UP_TO: Final = 64
