"""Per-token streamed payments: MPP sessions (`intent="session"`, the `evm` method and the
Tempo v1 profile) over payment channels — wire, channels, the voucher rule, durable state,
and the session meter that sells a stream per token (`SessionMeter`). Web-free; the proxy's
session stage is `meterkit.stages.session`, the aiohttp and Starlette adapters are
`meterkit.integrations`."""

from meterkit.sessions.channels import PREPAID_ESCROW, Channel, accept
from meterkit.sessions.hub import Hub
from meterkit.sessions.meter import Completion, PaidStream, Receipted, SessionMeter
from meterkit.sessions.store import ChannelStore, SessionStore
from meterkit.sessions.stores import make_store
from meterkit.sessions.wire import SessionPayload, parse_payload, recover_signer, sign_voucher

__all__ = [
    "PREPAID_ESCROW",
    "Channel",
    "ChannelStore",
    "Completion",
    "Hub",
    "PaidStream",
    "Receipted",
    "SessionMeter",
    "SessionPayload",
    "SessionStore",
    "accept",
    "make_store",
    "parse_payload",
    "recover_signer",
    "sign_voucher",
]
