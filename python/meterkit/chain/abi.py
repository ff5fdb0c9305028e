"""The few Solidity ABI encodings EIP-3009 settlement and the session escrow need: static
arguments, one `bytes` tail, static return words, a revert reason. (`eth_abi` would do the same in general; these calls
are fixed.)"""

from __future__ import annotations

from meterkit import _core

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)


def selector(signature: str) -> bytes:
    return _core.keccak256(signature.encode())[:4]


def word(value: int | str | bytes) -> bytes:
    """One 32-byte word: an int (uint), a 0x address or bytes32 hex, or raw bytes."""
    if isinstance(value, int):
        return value.to_bytes(32, "big")
    if isinstance(value, str):
        value = bytes.fromhex(value.removeprefix("0x"))
    if len(value) > 32:
        raise ValueError("a word holds at most 32 bytes")
    # Addresses and uints are left-padded; a 32-byte value is itself.
    return value.rjust(32, b"\0")


def encode_call(signature: str, *args: int | str | bytes) -> str:
    """Calldata for a function of static arguments only, as 0x hex."""
    return "0x" + (selector(signature) + b"".join(word(a) for a in args)).hex()


def encode_call_bytes(signature: str, *args: int | str | bytes, tail: bytes) -> str:
    """Calldata for a function of static arguments followed by one `bytes` argument (last)."""
    head = b"".join(word(a) for a in args) + word(32 * (len(args) + 1))
    padded = tail.ljust((len(tail) + 31) // 32 * 32, b"\0")
    return "0x" + (selector(signature) + head + word(len(tail)) + padded).hex()


def decode_words(data: str) -> list[int]:
    """A return value of static words, each as an int."""
    raw = bytes.fromhex(data.removeprefix("0x"))
    return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw) - 31, 32)]


def topic(signature: str) -> str:
    return "0x" + _core.keccak256(signature.encode()).hex()


def decode_uint(data: str) -> int:
    raw = data.removeprefix("0x")
    return int(raw[:64], 16) if raw else 0


def decode_revert(data: object) -> str | None:
    """The reason string of an `Error(string)` revert, or None."""
    if not isinstance(data, str):
        return None
    try:
        raw = bytes.fromhex(data.removeprefix("0x"))
    except ValueError:
        return None
    if raw[:4] != ERROR_SELECTOR or len(raw) < 4 + 64:
        return None
    length = int.from_bytes(raw[36:68], "big")
    return raw[68 : 68 + length].decode("utf-8", "replace")
