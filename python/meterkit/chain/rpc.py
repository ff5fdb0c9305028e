"""A thin async Ethereum JSON-RPC client over aiohttp (see the package docstring for why)."""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import orjson


class RpcUnavailable(Exception):
    """No answer from the node. `sent` is False when the request certainly never reached it
    (connection refused or not established in time), True when it may have."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class RpcError(Exception):
    """The node answered with a JSON-RPC error (e.g. `execution reverted`)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (JSON-RPC error {code})")
        self.code = code
        self.message = message
        self.data = data


# Errors raised before the request reached the node. (`ConnectionTimeoutError` is aiohttp
# >= 3.10; a plain `ClientConnectorError` before that.)
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    *((aiohttp.ConnectionTimeoutError,) if hasattr(aiohttp, "ConnectionTimeoutError") else ()),
)


class Rpc:
    """One node URL, one pooled session. `timeout` bounds every call (connect included)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout / 2, 5.0))
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    def _s(self) -> aiohttp.ClientSession:
        if self._session is None:
            # trust_env off: a node on 127.0.0.1 must never be reached through a proxy.
            self._session = aiohttp.ClientSession(timeout=self.timeout, trust_env=False)
        return self._session

    async def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        try:
            async with self._s().post(
                self.url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except _NOT_SENT as e:
            raise RpcUnavailable(f"{method}: the node is unreachable ({e})", sent=False) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RpcUnavailable(
                f"{method}: no answer from the node ({type(e).__name__}: {e})", sent=True
            ) from e
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise RpcUnavailable(f"{method}: HTTP {status}, not a JSON-RPC answer", sent=True)
        err = data.get("error")
        if isinstance(err, dict):
            raise RpcError(int(err.get("code", 0)), str(err.get("message", "")), err.get("data"))
        if "result" not in data:
            raise RpcUnavailable(f"{method}: HTTP {status}, an answer without a result", sent=True)
        return data["result"]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
