"""Payment configuration: `wallets`, `accepts`, `payments`, `ledger`, and the payment keys of a
route (`price`, `type: token-based`, `settlement`, `access`, `hooks`). Wire rules: the MPP Payment scheme and x402 (see payments/).

Prices are exact decimals ("$0.25" is a quarter of a dollar, "$1" one dollar), converted to
the asset's base units only when a challenge is built; a price that cannot be paid in whole
base units is a config error, never a silent rounding.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from meterkit.config.problems import KeyPath, Problems
from meterkit.config.units import parse_duration, parse_money

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_CALLABLE = re.compile(r"^[\w./-]+(\.py)?:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Asset:
    """An EIP-3009 token on one EVM chain."""

    symbol: str
    network: str  # the x402 v1 name, e.g. "base-sepolia"
    chain_id: int
    address: str
    decimals: int
    eip712_name: str
    eip712_version: str

    @property
    def caip2(self) -> str:
        return f"eip155:{self.chain_id}"


# Known tokens (their EIP-712 domains differ between networks: USDC on Base signs as
# "USD Coin", on Base Sepolia as "USDC").
KNOWN_ASSETS: dict[tuple[str, str], Asset] = {
    ("USDC", "base"): Asset(
        "USDC", "base", 8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", 6, "USD Coin", "2"
    ),
    ("USDC", "base-sepolia"): Asset(
        "USDC", "base-sepolia", 84532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e", 6, "USDC", "2"
    ),
}
NETWORK_IDS = {"base": 8453, "base-sepolia": 84532}


@dataclass(frozen=True)
class Accept:
    asset: Asset
    pay_to: str


# Deferred settlement: how long a queued authorization stays valid for batch submission, and
# how close to its end `meterkit ledger export` flags it as expiring.
DEFERRED_VALIDITY = 24 * 3600.0
DEFERRED_EXPIRY_MARGIN = 3600.0


@dataclass(frozen=True)
class SettlementConfig:
    """How authorizations are settled: an x402 facilitator, a deferred queue in the ledger
    (exported for batch submission), or a Python callable `module:function`.

    Deferred settlement submits an authorization long after the payer got its receipt, so the
    authorization must stay valid that long: `max_validity` (default 24 h). An EIP-3009
    authorization is valid until its challenge expires (MPP clients sign `validBefore =
    expires`; x402 clients `now + maxTimeoutSeconds`), so with deferred settlement challenges
    and x402 offers last `max_validity` too (`Payments.expires`). `expiry_margin`: rows with
    less time left are flagged `expiring` by `meterkit ledger export`."""

    type: str = "deferred"
    url: str | None = None
    timeout: float = 10.0
    callable: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    max_validity: float = DEFERRED_VALIDITY
    expiry_margin: float = DEFERRED_EXPIRY_MARGIN
    chain: Chain | None = None


# Gas bounds of on-chain settlement. A transferWithAuthorization costs ~60-100 k gas.
DEFAULT_GAS_LIMIT = 200_000
DEFAULT_MAX_FEE = 100 * 10**9  # 100 gwei
DEFAULT_PRIORITY_FEE = 10**9  # 1 gwei


@dataclass(frozen=True)
class Chain:
    """Submitting authorizations to the chain ourselves: `type: onchain` settles each one while
    the request waits; `type: deferred` with these keys lets `meterkit ledger settle` submit
    the queue. The relayer key pays the gas and never appears in a repr or a log.

    `confirmations`: blocks on top of the transfer's, itself included (1: mined). `timeout`
    (the settlement's) bounds each RPC call; `receipt_timeout` the wait for the receipt and
    confirmations, after which the outcome is unknown (the claim is kept for `ledger
    settle` to reconcile). Fees in wei: a base fee above `max_fee_per_gas` refuses to send
    (503) rather than overpay."""

    rpc_url: str
    relayer_key: str = field(repr=False)
    confirmations: int = 1
    max_fee_per_gas: int = DEFAULT_MAX_FEE
    max_priority_fee_per_gas: int = DEFAULT_PRIORITY_FEE
    gas_limit: int = DEFAULT_GAS_LIMIT
    receipt_timeout: float = 60.0
    poll_interval: float = 0.2


@dataclass(frozen=True)
class Payments:
    realm: str | None = None
    secret: str | None = None
    expires: float = 300.0
    # Longest an x402 authorization may stay valid from now.
    max_validity: float = 3600.0
    protocols: tuple[str, ...] = ("mpp", "x402")
    settlement: SettlementConfig = field(default_factory=SettlementConfig)
    discovery: bool = True
    # Signing key for time-window access tokens (defaults to the challenge secret).
    access_secret: str | None = None


@dataclass(frozen=True)
class LedgerConfig:
    type: str = "sqlite"
    path: str = "meterkit-data/ledger.sqlite3"
    url: str | None = None
    # PostgreSQL schema to keep the tables in (created when missing).
    schema: str | None = None
    # Seconds a ledger call may take on the request path before the client gets a 503.
    timeout: float = 5.0
    # Each gateway process holds a lease in the ledger, renewed every third of this: the
    # claims of a process that died are resolved once its lease runs out (issue 19 #1).
    lease: float = 15.0


@dataclass(frozen=True)
class TokenRates:
    """Per-token prices as exact decimals per one token."""

    input: Decimal
    output: Decimal


@dataclass(frozen=True)
class SessionTerms:
    """A route paid per token over a payment channel (MPP `intent="session"`)."""

    # Per completion token and per prompt token, in currency units (e.g. Decimal("0.00001")).
    price: Decimal
    prompt_price: Decimal = Decimal(0)
    suggested_deposit: Decimal | None = None
    min_voucher_delta: Decimal = Decimal(0)
    # Seconds a paused stream waits for a voucher before it ends.
    voucher_timeout: float = 30.0


@dataclass(frozen=True)
class RoutePayment:
    """The payment terms of a route."""

    # "fixed" (price, possibly per model), "token-based", or "free".
    type: str = "free"
    price: Decimal | None = None
    prices_by_model: Mapping[str, Decimal] = field(default_factory=dict)
    rates_by_model: Mapping[str, TokenRates] = field(default_factory=dict)
    settlement: str = "before-response"
    description: str | None = None
    # Time-window access: mint a token on success (ttl seconds), or require one.
    mint_access_ttl: float | None = None
    access_scope: str = "default"
    require_access: bool = False
    hooks: Mapping[str, str] = field(default_factory=dict)
    # Where clients send the MPP credential: `Authorization`, or `Payment-Authorization` for
    # routes whose clients keep `Authorization` for their own bearer key (it then reaches
    # the upstream; the Payment credential never does).
    credential_header: str = "Authorization"
    session: SessionTerms | None = None

    @property
    def priced(self) -> bool:
        return self.type != "free"


# ---- model keys of `price:` and `rates:` -------------------------------------------------------
#
# A key is a model name (`gpt-4o`), a glob over model names (`claude-*`, `gpt-4o-????-??-??`:
# `*` any run of characters, `?` one), or `default`. A request's model takes, in order: the
# exact key; the key of which it is a dated version (`gpt-4o-2024-08-06`, `…-20241022`,
# `…-latest` take `gpt-4o`); the most specific glob that matches (most literal characters,
# then the longest, then the first in alphabetical order); `default`. Before globs existed a
# `claude-*` key validated, never matched, and silently charged the default price.

_GLOB_CHARS = frozenset("*?")
_MODEL_KEY = re.compile(r"[A-Za-z0-9._:/@+*?-]+")
_DATED = r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)"


def is_glob(key: str) -> bool:
    return any(c in _GLOB_CHARS for c in key)


def check_model_key(key: Any) -> str | None:
    """Why a `price:`/`rates:` key is not a model name, glob or `default`; None if it is."""
    if not isinstance(key, str) or not key:
        return "a model key must be a non-empty string"
    if not _MODEL_KEY.fullmatch(key):
        return (
            f"{key!r} is not a model name or glob: use letters, digits and . _ : / @ + -, "
            "with * (any characters) and ? (one character) as wildcards"
        )
    if key.strip("*") == "" and key != "*":
        return f"{key!r}: write a match-everything model key as default"
    return None


def _specificity(glob: str) -> tuple[int, int]:
    return (sum(c not in _GLOB_CHARS for c in glob), len(glob))


def match_model(table: Mapping[str, Any], model: str | None) -> Any:
    """The value of `table` (a model-key mapping) for `model`; None when nothing matches."""
    if model is not None:
        if model in table:
            return table[model]
        dated = [
            k
            for k in table
            if not is_glob(k) and k != "default" and re.fullmatch(re.escape(k) + _DATED, model)
        ]
        if dated:
            return table[max(dated, key=len)]
        globs = sorted(
            (k for k in table if is_glob(k) and fnmatch.fnmatchcase(model, k)),
            key=lambda k: (-_specificity(k)[0], -_specificity(k)[1], k),
        )
        if globs:
            return table[globs[0]]
    return table.get("default")


HOOK_NAMES = ("onRequest", "onPriceResolved", "onSettled", "onResponse", "onError")
ROUTE_PAYMENT_KEYS = (
    "price",
    "type",
    "rates",
    "settlement",
    "description",
    "access",
    "hooks",
    "credential_header",
    "session",
)


def parse_session(value: Any, path: KeyPath, problems: Problems) -> SessionTerms | None:
    if not isinstance(value, dict):
        problems.add(path, 'expected {price: "$0.00001", prompt_price: …, voucher_timeout: 30s}')
        return None
    problems.unknown_keys(
        path,
        value,
        ("price", "prompt_price", "suggested_deposit", "min_voucher_delta", "voucher_timeout"),
    )
    if "price" not in value:
        problems.add(path / "price", "required: the price of one completion token")
        return None
    price = _money(value["price"], path / "price", problems)
    prompt = _money(value.get("prompt_price", "$0"), path / "prompt_price", problems)
    deposit = (
        _money(value["suggested_deposit"], path / "suggested_deposit", problems)
        if "suggested_deposit" in value
        else None
    )
    delta = _money(value.get("min_voucher_delta", "$0"), path / "min_voucher_delta", problems)
    timeout = 30.0
    if "voucher_timeout" in value:
        try:
            timeout = parse_duration(value["voucher_timeout"])
        except ValueError as e:
            problems.add(path / "voucher_timeout", str(e))
    if price is None or prompt is None or delta is None:
        return None
    if price <= 0:
        problems.add(path / "price", "a session price per token must be above zero")
        return None
    return SessionTerms(price, prompt, deposit, delta, timeout)


def _money(value: Any, path: KeyPath, problems: Problems) -> Decimal | None:
    try:
        return parse_money(value)
    except ValueError as e:
        problems.add(path, str(e))
        return None


def parse_rates(value: Any, path: KeyPath, problems: Problems) -> dict[str, TokenRates]:
    """`rates: {gpt-4o: {input: "$2.50", output: "$10.00", per: 1000000}, default: {...}}`
    — prices per `per` tokens (default one million), stored per single token."""
    out: dict[str, TokenRates] = {}
    if not isinstance(value, dict) or not value:
        problems.add(path, "expected a mapping of model (or default) to {input, output, per}")
        return out
    for model, spec in value.items():
        p = path / str(model)
        why = check_model_key(model)
        if why is not None:
            problems.add(p, why)
            continue
        if not isinstance(spec, dict):
            problems.add(p, 'expected {input: "$…", output: "$…", per: 1000000}')
            continue
        problems.unknown_keys(p, spec, ("input", "output", "per"))
        per = spec.get("per", 1_000_000)
        if isinstance(per, bool) or not isinstance(per, int) or per <= 0:
            problems.add(p / "per", "expected a positive integer number of tokens")
            continue
        rin = _money(spec.get("input"), p / "input", problems)
        rout = _money(spec.get("output"), p / "output", problems)
        if rin is not None and rout is not None:
            out[str(model)] = TokenRates(rin / per, rout / per)
    return out


def parse_route_payment(m: Mapping[str, Any], path: KeyPath, problems: Problems) -> RoutePayment:
    kind = m.get("type")
    price = m.get("price")
    prices: dict[str, Decimal] = {}
    fixed: Decimal | None = None
    rates: dict[str, TokenRates] = {}
    if kind not in (None, "fixed", "token-based", "free"):
        problems.add(path / "type", f"expected fixed, token-based or free, got {kind!r}")
    if kind == "token-based":
        if "rates" not in m:
            problems.add(path / "rates", "token-based routes need per-model token rates")
        else:
            rates = parse_rates(m["rates"], path / "rates", problems)
        if price is not None:
            problems.add(
                path / "price", "a token-based route is priced by its rates, not a fixed price"
            )
        typ = "token-based"
    elif price is not None:
        if isinstance(price, dict):
            for model, v in price.items():
                why = check_model_key(model)
                if why is not None:
                    problems.add(path / "price" / str(model), why)
                    continue
                d = _money(v, path / "price" / str(model), problems)
                if d is not None:
                    prices[str(model)] = d
        else:
            fixed = _money(price, path / "price", problems)
        typ = "fixed"
        if fixed is not None and fixed == 0 and not prices:
            typ = "free"
    else:
        typ = "free"
        if "rates" in m:
            problems.add(path / "rates", "rates apply to type: token-based routes")
    settlement = m.get("settlement", "before-response")
    if settlement not in ("before-response", "after-response"):
        problems.add(
            path / "settlement", f"expected before-response or after-response, got {settlement!r}"
        )
        settlement = "before-response"
    description = m.get("description")
    if description is not None and not isinstance(description, str):
        problems.add(path / "description", "expected a string")
        description = None
    mint_ttl = None
    scope = "default"
    require = False
    access = m.get("access")
    if access is not None:
        ap = path / "access"
        if not isinstance(access, dict):
            problems.add(
                ap, "expected {mint: {ttl: 1h, scope: NAME}} or {require: true, scope: NAME}"
            )
        else:
            problems.unknown_keys(ap, access, ("mint", "require", "scope"))
            scope = str(access.get("scope", "default"))
            if "mint" in access:
                mint = access["mint"]
                if not isinstance(mint, dict):
                    problems.add(ap / "mint", "expected {ttl: DURATION}")
                else:
                    problems.unknown_keys(ap / "mint", mint, ("ttl", "scope"))
                    scope = str(mint.get("scope", scope))
                    try:
                        mint_ttl = parse_duration(mint.get("ttl", 3600))
                    except ValueError as e:
                        problems.add(ap / "mint" / "ttl", str(e))
            req = access.get("require", False)
            if not isinstance(req, bool):
                problems.add(ap / "require", "expected true or false")
            else:
                require = req
    hooks: dict[str, str] = {}
    hm = m.get("hooks")
    if hm is not None:
        if not isinstance(hm, dict):
            problems.add(
                path / "hooks", f"expected a mapping of {', '.join(HOOK_NAMES)} to module:function"
            )
        else:
            problems.unknown_keys(path / "hooks", hm, HOOK_NAMES)
            for name, ref in hm.items():
                if name in HOOK_NAMES:
                    if not isinstance(ref, str) or not _CALLABLE.match(ref):
                        problems.add(
                            path / "hooks" / name,
                            f"expected 'package.module:function' or 'path/file.py:function', got {ref!r}",
                        )
                    else:
                        hooks[name] = ref
    credential_header = m.get("credential_header", "Authorization")
    if credential_header not in ("Authorization", "Payment-Authorization"):
        problems.add(
            path / "credential_header",
            f"expected Authorization or Payment-Authorization, got {credential_header!r}",
        )
        credential_header = "Authorization"
    session = parse_session(m["session"], path / "session", problems) if "session" in m else None
    return RoutePayment(
        type=typ,
        price=fixed,
        prices_by_model=prices,
        rates_by_model=rates,
        settlement=settlement,
        description=description,
        mint_access_ttl=mint_ttl,
        access_scope=scope,
        require_access=require,
        hooks=hooks,
        credential_header=credential_header,
        session=session,
    )


def parse_wallets(value: Any, path: KeyPath, problems: Problems) -> dict[str, str]:
    out: dict[str, str] = {}
    if value is None:
        return out
    if not isinstance(value, dict):
        problems.add(path, "expected a mapping of network to recipient address")
        return out
    for net, addr in value.items():
        if not isinstance(addr, str) or not _ADDRESS.match(addr):
            problems.add(path / str(net), f"expected a 0x address, got {addr!r}")
        else:
            out[str(net)] = addr
    return out


def parse_accepts(
    value: Any, wallets: Mapping[str, str], path: KeyPath, problems: Problems
) -> list[Accept]:
    out: list[Accept] = []
    if value is None:
        return out
    if not isinstance(value, list):
        problems.add(path, "expected a list like [{asset: USDC, network: base}]")
        return out
    for i, item in enumerate(value):
        p = path / i
        if not isinstance(item, dict):
            problems.add(p, "expected {asset, network}")
            continue
        problems.unknown_keys(
            p,
            item,
            ("asset", "network", "address", "decimals", "name", "version", "chain_id", "pay_to"),
        )
        symbol, network = item.get("asset"), item.get("network")
        if not isinstance(symbol, str) or not isinstance(network, str):
            problems.add(p, "asset and network are required strings")
            continue
        known = KNOWN_ASSETS.get((symbol.upper(), network))
        if known is None:
            # A custom token: every EIP-712 detail must be given.
            missing = [
                k for k in ("address", "decimals", "name", "version", "chain_id") if k not in item
            ]
            if missing:
                problems.add(p, f"unknown asset {symbol} on {network}: give {', '.join(missing)}")
                continue
            if not isinstance(item["address"], str) or not _ADDRESS.match(item["address"]):
                problems.add(p / "address", "expected a 0x token address")
                continue
            asset = Asset(
                symbol,
                network,
                int(item["chain_id"]),
                item["address"],
                int(item["decimals"]),
                str(item["name"]),
                str(item["version"]),
            )
        else:
            asset = known
        pay_to = item.get("pay_to") or wallets.get(network)
        if not isinstance(pay_to, str) or not _ADDRESS.match(pay_to):
            problems.add(p, f"no recipient for {network}: set wallets.{network} or pay_to")
            continue
        out.append(Accept(asset, pay_to))
    return out


def parse_payments(value: Any, path: KeyPath, problems: Problems) -> Payments:
    if value is None:
        return Payments()
    if not isinstance(value, dict):
        problems.add(path, "expected a mapping")
        return Payments()
    problems.unknown_keys(
        path,
        value,
        (
            "realm",
            "secret",
            "expires",
            "max_validity",
            "protocols",
            "settlement",
            "discovery",
            "access_secret",
        ),
    )
    kw: dict[str, Any] = {}
    for k in ("realm", "secret", "access_secret"):
        if k in value:
            if not isinstance(value[k], str) or not value[k]:
                problems.add(path / k, "expected a non-empty string")
            else:
                kw[k] = value[k]
    if "secret" in kw and len(kw["secret"]) < 16:
        problems.add(path / "secret", "use at least 16 characters (it binds challenge ids)")
    kw.update(problems.parsed(path, value, ("expires", "max_validity"), parse_duration)[0])
    if "protocols" in value:
        pr = value["protocols"]
        if not isinstance(pr, list) or not pr or any(x not in ("mpp", "x402") for x in pr):
            problems.add(path / "protocols", "expected a non-empty list of mpp, x402")
        else:
            kw["protocols"] = tuple(pr)
    if "discovery" in value:
        if not isinstance(value["discovery"], bool):
            problems.add(path / "discovery", "expected true or false")
        else:
            kw["discovery"] = value["discovery"]
    if "settlement" in value:
        kw["settlement"] = _settlement(value["settlement"], path / "settlement", problems)
    _deferred_windows(kw, path, problems)
    return Payments(**kw)


def _deferred_windows(kw: dict[str, Any], path: KeyPath, problems: Problems) -> None:
    """With deferred settlement, challenges and accepted authorizations last the settlement's
    `max_validity` (see `SettlementConfig`): a 300 s challenge made a queued authorization expire
    five minutes after the payer held a success receipt, long before any batch."""
    settlement: SettlementConfig = kw.get("settlement", SettlementConfig())
    if settlement.type != "deferred":
        return
    window = settlement.max_validity
    for key, default in (("expires", Payments.expires), ("max_validity", Payments.max_validity)):
        if key not in kw:
            kw[key] = max(default, window)
        elif kw[key] < window:
            problems.add(
                path / key,
                f"with deferred settlement, {key} must be at least settlement.max_validity "
                f"({window:g} s): an authorization is only valid as long as its challenge",
            )


CHAIN_KEYS = (
    "rpc_url",
    "relayer_key",
    "confirmations",
    "max_fee_per_gas",
    "max_priority_fee_per_gas",
    "gas_limit",
    "receipt_timeout",
    "poll_interval",
)
_WEI_UNITS = {"wei": 1, "gwei": 10**9, "ether": 10**18, "eth": 10**18}


def parse_wei(value: Any) -> int:
    """An amount of wei: an integer, or a string like "30 gwei", "1.5 gwei", "100 wei"."""
    if isinstance(value, bool):
        raise ValueError("expected wei, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a non-negative amount")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(wei|gwei|ether|eth)?\s*", value.lower())
        if m:
            amount = Decimal(m.group(1)) * _WEI_UNITS[m.group(2) or "wei"]
            if amount == amount.to_integral_value():
                return int(amount)
            raise ValueError(f"{value!r} is not a whole number of wei")
    raise ValueError(f"expected wei (an integer or e.g. '30 gwei'), got {value!r}")


def _chain(value: Mapping[str, Any], kind: str, path: KeyPath, problems: Problems) -> Chain | None:
    present = [k for k in CHAIN_KEYS if k in value]
    if kind not in ("onchain", "deferred"):
        for k in present:
            problems.add(path / k, "applies to type: onchain (or deferred, for ledger settle)")
        return None
    if kind == "deferred" and not present:
        return None
    return parse_chain(value, path, problems, key_name="relayer_key", who="relayer")


def parse_chain(
    value: Mapping[str, Any], path: KeyPath, problems: Problems, *, key_name: str, who: str
) -> Chain | None:
    """The keys of a chain that meterkit sends transactions to (settlement's relayer, the
    session escrow's operator): node URL, signing key (`key_name`), gas and fee caps,
    confirmations and receipt waits. None, with problems added, when any is wrong."""
    ok = True
    url = value.get("rpc_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        problems.add(path / "rpc_url", "expected the chain node's http(s) JSON-RPC URL")
        ok = False
    key = value.get(key_name)
    if not isinstance(key, str) or not re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", key):
        # Never echo the value: it may be most of a private key.
        problems.add(
            path / key_name,
            f"expected the {who}'s private key as 0x + 64 hex digits, "
            f'e.g. "${{{key_name.upper()}}}"',
        )
        ok = False
    kw: dict[str, Any] = {}
    for k in ("confirmations", "gas_limit"):
        if k in value:
            v = value[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.add(path / k, "expected a positive integer")
                ok = False
            else:
                kw[k] = v
    fees, fees_ok = problems.parsed(
        path, value, ("max_fee_per_gas", "max_priority_fee_per_gas"), parse_wei
    )
    times, times_ok = problems.parsed(
        path, value, ("receipt_timeout", "poll_interval"), parse_duration
    )
    kw.update(fees)
    kw.update(times)
    ok = ok and fees_ok and times_ok
    if not ok:
        return None
    assert isinstance(url, str) and isinstance(key, str)
    chain = Chain(rpc_url=url, relayer_key=key, **kw)
    if chain.max_priority_fee_per_gas > chain.max_fee_per_gas:
        problems.add(path / "max_priority_fee_per_gas", "must not exceed max_fee_per_gas")
        return None
    return chain


def _settlement(value: Any, path: KeyPath, problems: Problems) -> SettlementConfig:
    if not isinstance(value, dict):
        problems.add(
            path,
            "expected {type: facilitator, url: …} | {type: onchain, rpc_url: …, relayer_key: …}"
            " | {type: deferred} | {type: callable, callable: …}",
        )
        return SettlementConfig()
    problems.unknown_keys(
        path,
        value,
        (
            "type",
            "url",
            "timeout",
            "callable",
            "headers",
            "max_validity",
            "expiry_margin",
            *CHAIN_KEYS,
        ),
    )
    kind = value.get("type", "deferred")
    if kind not in ("facilitator", "onchain", "deferred", "callable"):
        problems.add(
            path / "type", f"expected facilitator, onchain, deferred or callable, got {kind!r}"
        )
        return SettlementConfig()
    chain = _chain(value, kind, path, problems)
    url = value.get("url")
    if kind == "facilitator" and (
        not isinstance(url, str) or not url.startswith(("http://", "https://"))
    ):
        problems.add(path / "url", "a facilitator needs its http(s) URL")
    func = value.get("callable")
    if kind == "callable" and (not isinstance(func, str) or not _CALLABLE.match(func)):
        problems.add(
            path / "callable", "expected 'package.module:function' or 'path/file.py:function'"
        )
    timeout = 10.0
    if "timeout" in value:
        try:
            timeout = parse_duration(value["timeout"])
        except ValueError as e:
            problems.add(path / "timeout", str(e))
    headers = value.get("headers") or {}
    if not isinstance(headers, dict):
        problems.add(path / "headers", "expected a mapping")
        headers = {}
    windows = {"max_validity": DEFERRED_VALIDITY, "expiry_margin": DEFERRED_EXPIRY_MARGIN}
    for k in windows:
        if k not in value:
            continue
        if kind != "deferred":
            problems.add(path / k, "applies to type: deferred only")
            continue
        try:
            windows[k] = parse_duration(value[k])
        except ValueError as e:
            problems.add(path / k, str(e))
    if windows["max_validity"] <= windows["expiry_margin"]:
        problems.add(
            path / "max_validity",
            f"must be longer than expiry_margin ({windows['expiry_margin']:g} s), or every "
            "queued authorization is exported as expiring",
        )
    return SettlementConfig(
        type=kind,
        url=url if isinstance(url, str) else None,
        timeout=timeout,
        callable=func if isinstance(func, str) else None,
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
        max_validity=windows["max_validity"],
        expiry_margin=windows["expiry_margin"],
        chain=chain,
    )


def parse_ledger(value: Any, path: KeyPath, problems: Problems) -> LedgerConfig:
    if value is None:
        return LedgerConfig()
    if not isinstance(value, dict):
        problems.add(path, "expected {type: sqlite, path: …} or {type: postgres, url: …}")
        return LedgerConfig()
    problems.unknown_keys(path, value, ("type", "path", "url", "schema", "timeout", "lease"))
    kind = value.get("type", "sqlite")
    if kind not in ("sqlite", "postgres"):
        problems.add(path / "type", f"expected sqlite or postgres, got {kind!r}")
        return LedgerConfig()
    url = value.get("url")
    if kind == "postgres" and (
        not isinstance(url, str) or not url.startswith(("postgres://", "postgresql://"))
    ):
        problems.add(path / "url", "a postgres ledger needs a postgresql:// URL")
    p = value.get("path", LedgerConfig.path)
    if not isinstance(p, str):
        problems.add(path / "path", "expected a file path")
        p = LedgerConfig.path
    schema = value.get("schema")
    if schema is not None and (
        not isinstance(schema, str) or not re.match(r"^[a-z_][a-z0-9_]*$", schema)
    ):
        problems.add(path / "schema", "expected a lowercase SQL identifier")
        schema = None
    timeout = LedgerConfig.timeout
    if "timeout" in value:
        try:
            timeout = parse_duration(value["timeout"])
        except ValueError as e:
            problems.add(path / "timeout", str(e))
    lease = LedgerConfig.lease
    if "lease" in value:
        try:
            lease = parse_duration(value["lease"])
            if lease < 1:
                problems.add(path / "lease", "expected at least 1s (renewed every third of it)")
                lease = LedgerConfig.lease
        except ValueError as e:
            problems.add(path / "lease", str(e))
    return LedgerConfig(
        type=kind,
        path=p,
        url=url if isinstance(url, str) else None,
        schema=schema,
        timeout=timeout,
        lease=lease,
    )
