"""MeterkitEscrow on anvil: open pulls the deposit, settle pays a voucher signed by
`sessions.wire.sign_voucher`, close pays the delta and refunds the rest, requestClose and
withdraw after the grace period; bad signatures, amounts over the deposit or not above what
was settled, and callers other than the payee revert."""

from __future__ import annotations

import pytest

from meterkit import _core
from meterkit.chain import escrow, token
from meterkit.chain.abi import encode_call
from meterkit.chain.anvil import rpc_sync
from meterkit.sessions.wire import sign_voucher
from support.chain import UNIT, LocalChain
from support.escrow import OPERATOR, open_channel, payer


def send_as(chain: LocalChain, sender: str, to: str, data: str) -> None:
    token.send(chain.url, to, data, sender=sender)


def reverts(chain: LocalChain, sender: str, to: str, data: str, reason: str) -> None:
    with pytest.raises(RuntimeError, match=reason):
        escrow.call(chain.url, to, data, sender)


def test_open_settle_close_pay_the_payee_and_refund_the_payer(
    chain: LocalChain, chain_escrows: dict[str, str]
) -> None:
    esc = chain_escrows["evm"]
    key, address = payer(chain)
    cid = open_channel(chain, esc, key, 5 * UNIT)
    # The channel id is the §9 rule, as the Rust core computes it.
    c = escrow.read_channel(chain.url, esc, cid)
    assert c.exists and not c.finalized and c.close_requested_at == 0
    assert (c.payer, c.payee, c.token) == (
        _core.checksum_address(address),
        _core.checksum_address(OPERATOR),
        _core.checksum_address(chain.token),
    )
    assert (c.deposit, c.settled) == (5 * UNIT, 0)
    assert chain.balance(address) == 5 * UNIT and chain.balance(esc) == 5 * UNIT

    sig = sign_voucher(key, "evm", chain.node.chain_id, esc, cid, 2 * UNIT)
    send_as(chain, OPERATOR, esc, escrow.settle_calldata(cid, 2 * UNIT, sig))
    assert escrow.read_channel(chain.url, esc, cid).settled == 2 * UNIT
    assert chain.balance(OPERATOR) == 2 * UNIT

    # The same voucher again is not above what was settled.
    reverts(chain, OPERATOR, esc, escrow.settle_calldata(cid, 2 * UNIT, sig), "not above settled")

    sig3 = sign_voucher(key, "evm", chain.node.chain_id, esc, cid, 3 * UNIT)
    send_as(chain, OPERATOR, esc, escrow.close_calldata(cid, 3 * UNIT, 3 * UNIT, sig3))
    c = escrow.read_channel(chain.url, esc, cid)
    assert c.finalized and c.settled == 3 * UNIT
    assert chain.balance(OPERATOR) == 3 * UNIT
    assert chain.balance(address) == 7 * UNIT  # 5 kept + 2 refunded
    assert chain.balance(esc) == 0
    # Finalized is sticky.
    reverts(chain, OPERATOR, esc, escrow.settle_calldata(cid, 4 * UNIT, sig3), "finalized")


def test_close_captures_only_what_was_consumed_of_the_highest_voucher(
    chain: LocalChain, chain_escrows: dict[str, str]
) -> None:
    esc = chain_escrows["evm"]
    key, address = payer(chain)
    cid = open_channel(chain, esc, key, 5 * UNIT)
    sig = sign_voucher(key, "evm", chain.node.chain_id, esc, cid, 4 * UNIT)
    reverts(
        chain, OPERATOR, esc, escrow.close_calldata(cid, 4 * UNIT, 5 * UNIT, sig), "capture above"
    )
    send_as(chain, OPERATOR, esc, escrow.close_calldata(cid, 4 * UNIT, UNIT + 7, sig))
    assert escrow.read_channel(chain.url, esc, cid).settled == UNIT + 7
    assert chain.balance(OPERATOR) == UNIT + 7
    assert chain.balance(address) == 10 * UNIT - UNIT - 7


def test_vouchers_that_must_not_pay_revert(
    chain: LocalChain, chain_escrows: dict[str, str]
) -> None:
    esc, tempo = chain_escrows["evm"], chain_escrows["tempo"]
    key, address = payer(chain)
    cid = open_channel(chain, esc, key, 5 * UNIT)
    cid_id = chain.node.chain_id
    good = sign_voucher(key, "evm", cid_id, esc, cid, UNIT)
    # Someone else's key.
    other = sign_voucher(b"\x01" * 32, "evm", cid_id, esc, cid, UNIT)
    reverts(chain, OPERATOR, esc, escrow.settle_calldata(cid, UNIT, other), "invalid signature")
    # Signed for another amount.
    reverts(chain, OPERATOR, esc, escrow.settle_calldata(cid, UNIT + 1, good), "invalid signature")
    # The Tempo v1 domain name is another domain: not valid on the evm deployment...
    tempo_sig = sign_voucher(key, "tempo", cid_id, esc, cid, UNIT)
    reverts(chain, OPERATOR, esc, escrow.settle_calldata(cid, UNIT, tempo_sig), "invalid signature")
    # High s (the same signature's malleable twin).
    raw = bytes.fromhex(good[2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high = raw[:32] + (n - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big")
    high += bytes([55 - raw[64]])  # 27 <-> 28
    reverts(chain, OPERATOR, esc, escrow.settle_calldata(cid, UNIT, "0x" + high.hex()), "invalid")
    # Over the deposit, even when signed.
    over = sign_voucher(key, "evm", cid_id, esc, cid, 5 * UNIT + 1)
    reverts(
        chain, OPERATOR, esc, escrow.settle_calldata(cid, 5 * UNIT + 1, over), "exceeds deposit"
    )
    # Only the payee settles.
    reverts(chain, address, esc, escrow.settle_calldata(cid, UNIT, good), "not the payee")
    # An EIP-2098 compact signature of the same voucher pays.
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    compact = r + ((v - 27) << 255 | s).to_bytes(32, "big")
    send_as(chain, OPERATOR, esc, escrow.settle_calldata(cid, UNIT, "0x" + compact.hex()))
    assert escrow.read_channel(chain.url, esc, cid).settled == UNIT

    # The Tempo-named deployment takes the Tempo v1 voucher.
    tcid = open_channel(chain, tempo, key, 2 * UNIT)
    tsig = sign_voucher(key, "tempo", cid_id, tempo, tcid, UNIT)
    evm_sig = sign_voucher(key, "evm", cid_id, tempo, tcid, UNIT)
    reverts(chain, OPERATOR, tempo, escrow.settle_calldata(tcid, UNIT, evm_sig), "invalid")
    send_as(chain, OPERATOR, tempo, escrow.settle_calldata(tcid, UNIT, tsig))
    assert escrow.read_channel(chain.url, tempo, tcid).settled == UNIT


def test_an_authorized_signer_signs_instead_of_the_payer(
    chain: LocalChain, chain_escrows: dict[str, str]
) -> None:
    esc = chain_escrows["evm"]
    key, _ = payer(chain)
    signer_key = b"\x02" * 32
    cid = open_channel(chain, esc, key, UNIT, authorized_signer=_core.address_of(signer_key))
    by_payer = sign_voucher(key, "evm", chain.node.chain_id, esc, cid, 10)
    reverts(chain, OPERATOR, esc, escrow.settle_calldata(cid, 10, by_payer), "invalid signature")
    by_signer = sign_voucher(signer_key, "evm", chain.node.chain_id, esc, cid, 10)
    send_as(chain, OPERATOR, esc, escrow.settle_calldata(cid, 10, by_signer))


def test_request_close_then_withdraw_after_the_grace_period(
    chain: LocalChain, chain_escrows: dict[str, str]
) -> None:
    esc = chain_escrows["evm"]
    key, address = payer(chain)
    cid = open_channel(chain, esc, key, 5 * UNIT)
    sig = sign_voucher(key, "evm", chain.node.chain_id, esc, cid, UNIT)
    send_as(chain, OPERATOR, esc, escrow.settle_calldata(cid, UNIT, sig))
    withdraw = encode_call("withdraw(bytes32)", cid)
    reverts(chain, address, esc, withdraw, "no close requested")
    # Only the payer may request a close.
    reverts(chain, OPERATOR, esc, encode_call("requestClose(bytes32)", cid), "not the payer")
    escrow.send_signed(chain.url, key, esc, encode_call("requestClose(bytes32)", cid))
    assert escrow.read_channel(chain.url, esc, cid).close_requested_at > 0
    reverts(chain, address, esc, withdraw, "grace period not over")
    rpc_sync(chain.url, "evm_increaseTime", escrow.GRACE_PERIOD - 60)
    rpc_sync(chain.url, "evm_mine")
    reverts(chain, address, esc, withdraw, "grace period not over")
    # The payee may still settle during the grace period.
    sig2 = sign_voucher(key, "evm", chain.node.chain_id, esc, cid, 2 * UNIT)
    send_as(chain, OPERATOR, esc, escrow.settle_calldata(cid, 2 * UNIT, sig2))
    rpc_sync(chain.url, "evm_increaseTime", 61)
    rpc_sync(chain.url, "evm_mine")
    escrow.send_signed(chain.url, key, esc, withdraw)
    c = escrow.read_channel(chain.url, esc, cid)
    assert c.finalized and c.settled == 2 * UNIT
    assert chain.balance(address) == 8 * UNIT and chain.balance(OPERATOR) == 2 * UNIT
    assert chain.balance(esc) == 0


def test_top_up_adds_to_the_deposit_and_cancels_a_close_request(
    chain: LocalChain, chain_escrows: dict[str, str]
) -> None:
    esc = chain_escrows["evm"]
    key, address = payer(chain)
    salt = "0x" + "01" * 32
    cid = open_channel(chain, esc, key, 2 * UNIT, salt=salt)
    escrow.send_signed(chain.url, key, esc, encode_call("requestClose(bytes32)", cid))
    escrow.send_signed(
        chain.url, key, chain.token, encode_call("approve(address,uint256)", esc, UNIT)
    )
    escrow.send_signed(chain.url, key, esc, encode_call("topUp(bytes32,uint128)", cid, UNIT))
    c = escrow.read_channel(chain.url, esc, cid)
    assert c.deposit == 3 * UNIT and c.close_requested_at == 0
    # A channel id is taken once: the same salt cannot open a second channel.
    again = encode_call(escrow.OPEN, OPERATOR, chain.token, UNIT, salt, "0x" + "00" * 20)
    reverts(chain, address, esc, again, "channel exists")
    assert escrow.read_channel(chain.url, esc, "0x" + "ab" * 32).exists is False
