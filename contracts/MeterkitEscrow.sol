// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title Unidirectional payment channels for per-token streamed payments (MPP sessions).
/// @notice The mandatory core of the `evm` session method (draft-evm-session-00): a payer
/// deposits an ERC-20 amount into a channel, signs cumulative vouchers off chain
/// (`Voucher(bytes32 channelId,uint128 cumulativeAmount)` under EIP-712), and the payee
/// settles or closes with the highest one. The EIP-712 domain name is a constructor argument:
/// "EVM Payment Channel" for the `evm` method, "Tempo Stream Channel" for the Tempo v1
/// profile (mppx's `sessionLegacyManager`); the version is "1".
///
/// A channel record is never deleted and `finalized` is sticky: a closed channel cannot be
/// reopened (clients pick a new salt). `channelId = keccak256(abi.encode(payer, payee, token,
/// salt, authorizedSigner, escrow, chainId))`.
///
/// Beyond the core, `close` has a capture variant: the payee closes with the payer's highest
/// voucher but takes only `captureAmount` of it (what was consumed), refunding the rest.
/// Only the payee can give up money this way; the payer's signature still bounds it.
contract MeterkitEscrow is EIP712 {
    using SafeERC20 for IERC20;

    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount)");
    /// How long a payer waits between `requestClose` and `withdraw`: the payee's window to
    /// settle or close with the vouchers it holds.
    uint64 public constant CLOSE_GRACE_PERIOD = 15 minutes;

    /// Field order is the one mppx's escrow ABI reads from `getChannel`.
    struct Channel {
        bool finalized;
        uint64 closeRequestedAt;
        address payer;
        address payee;
        address token;
        address authorizedSigner;
        uint128 deposit;
        uint128 settled;
    }

    mapping(bytes32 => Channel) private _channels;

    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        address token,
        address authorizedSigner,
        bytes32 salt,
        uint128 deposit
    );
    event Settled(bytes32 indexed channelId, uint128 cumulativeAmount, uint128 paid);
    event ToppedUp(bytes32 indexed channelId, uint128 additional, uint128 deposit);
    event CloseRequested(bytes32 indexed channelId, uint64 requestedAt);
    event ChannelClosed(bytes32 indexed channelId, uint128 settled, uint128 refunded);
    event Withdrawn(bytes32 indexed channelId, uint128 refunded);

    constructor(string memory name_) EIP712(name_, "1") {}

    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function computeChannelId(
        address payer,
        address payee,
        address token,
        bytes32 salt,
        address authorizedSigner
    ) public view returns (bytes32) {
        return keccak256(
            abi.encode(payer, payee, token, salt, authorizedSigner, address(this), block.chainid)
        );
    }

    function getChannel(bytes32 channelId) external view returns (Channel memory) {
        return _channels[channelId];
    }

    function getVoucherDigest(bytes32 channelId, uint128 cumulativeAmount)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount)));
    }

    /// @notice Open a channel from msg.sender (the payer) to `payee`, pulling `deposit` of
    /// `token` with transferFrom (approve this contract first).
    function open(
        address payee,
        address token,
        uint128 deposit,
        bytes32 salt,
        address authorizedSigner
    ) external returns (bytes32 channelId) {
        require(payee != address(0), "MeterkitEscrow: zero payee");
        require(token != address(0), "MeterkitEscrow: zero token");
        require(deposit > 0, "MeterkitEscrow: zero deposit");
        channelId = computeChannelId(msg.sender, payee, token, salt, authorizedSigner);
        Channel storage c = _channels[channelId];
        require(c.payer == address(0), "MeterkitEscrow: channel exists");
        c.payer = msg.sender;
        c.payee = payee;
        c.token = token;
        c.authorizedSigner = authorizedSigner;
        c.deposit = deposit;
        IERC20(token).safeTransferFrom(msg.sender, address(this), deposit);
        emit ChannelOpened(channelId, msg.sender, payee, token, authorizedSigner, salt, deposit);
    }

    /// @notice The payee collects `cumulativeAmount - settled` with a voucher; the channel
    /// stays open.
    function settle(bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature)
        external
    {
        Channel storage c = _payeeChannel(channelId);
        require(cumulativeAmount > c.settled, "MeterkitEscrow: amount not above settled");
        require(cumulativeAmount <= c.deposit, "MeterkitEscrow: amount exceeds deposit");
        _checkVoucher(c, channelId, cumulativeAmount, signature);
        uint128 paid = cumulativeAmount - c.settled;
        c.settled = cumulativeAmount;
        IERC20(c.token).safeTransfer(c.payee, paid);
        emit Settled(channelId, cumulativeAmount, paid);
    }

    /// @notice The payer adds to the deposit; a pending close request is cancelled.
    function topUp(bytes32 channelId, uint128 additional) external {
        Channel storage c = _channels[channelId];
        require(c.payer != address(0), "MeterkitEscrow: no such channel");
        require(!c.finalized, "MeterkitEscrow: channel finalized");
        require(msg.sender == c.payer, "MeterkitEscrow: caller is not the payer");
        require(additional > 0, "MeterkitEscrow: zero top-up");
        c.deposit += additional;
        c.closeRequestedAt = 0;
        IERC20(c.token).safeTransferFrom(msg.sender, address(this), additional);
        emit ToppedUp(channelId, additional, c.deposit);
    }

    /// @notice The payee closes: collects `cumulativeAmount - settled` (nothing when the
    /// voucher is not above what was settled), refunds the rest to the payer, finalizes.
    function close(bytes32 channelId, uint128 cumulativeAmount, bytes calldata signature)
        external
    {
        _close(channelId, cumulativeAmount, cumulativeAmount, signature);
    }

    /// @notice Close with the payer's highest voucher (`cumulativeAmount`, signed) but take
    /// only `captureAmount` of it (settled <= captureAmount <= cumulativeAmount): a gateway
    /// captures what was consumed, never the whole authorization.
    function close(
        bytes32 channelId,
        uint128 cumulativeAmount,
        uint128 captureAmount,
        bytes calldata signature
    ) external {
        require(captureAmount <= cumulativeAmount, "MeterkitEscrow: capture above voucher");
        _close(channelId, cumulativeAmount, captureAmount, signature);
    }

    /// @notice The payer asks to close; after the grace period it may `withdraw`.
    function requestClose(bytes32 channelId) external {
        Channel storage c = _channels[channelId];
        require(c.payer != address(0), "MeterkitEscrow: no such channel");
        require(!c.finalized, "MeterkitEscrow: channel finalized");
        require(msg.sender == c.payer, "MeterkitEscrow: caller is not the payer");
        if (c.closeRequestedAt == 0) {
            c.closeRequestedAt = uint64(block.timestamp);
            emit CloseRequested(channelId, c.closeRequestedAt);
        }
    }

    /// @notice After the grace period of a close request, the payer takes back what was
    /// not settled; the channel is finalized.
    function withdraw(bytes32 channelId) external {
        Channel storage c = _channels[channelId];
        require(c.payer != address(0), "MeterkitEscrow: no such channel");
        require(!c.finalized, "MeterkitEscrow: channel finalized");
        require(msg.sender == c.payer, "MeterkitEscrow: caller is not the payer");
        require(c.closeRequestedAt != 0, "MeterkitEscrow: no close requested");
        require(
            block.timestamp >= uint256(c.closeRequestedAt) + CLOSE_GRACE_PERIOD,
            "MeterkitEscrow: grace period not over"
        );
        c.finalized = true;
        uint128 refund = c.deposit - c.settled;
        if (refund > 0) IERC20(c.token).safeTransfer(c.payer, refund);
        emit Withdrawn(channelId, refund);
    }

    // ---- internals ------------------------------------------------------------------------

    function _payeeChannel(bytes32 channelId) private view returns (Channel storage c) {
        c = _channels[channelId];
        require(c.payer != address(0), "MeterkitEscrow: no such channel");
        require(!c.finalized, "MeterkitEscrow: channel finalized");
        require(msg.sender == c.payee, "MeterkitEscrow: caller is not the payee");
    }

    function _close(
        bytes32 channelId,
        uint128 cumulativeAmount,
        uint128 captureAmount,
        bytes calldata signature
    ) private {
        Channel storage c = _payeeChannel(channelId);
        uint128 paid;
        if (captureAmount > c.settled) {
            require(captureAmount <= c.deposit, "MeterkitEscrow: amount exceeds deposit");
            _checkVoucher(c, channelId, cumulativeAmount, signature);
            paid = captureAmount - c.settled;
            c.settled = captureAmount;
        }
        c.finalized = true;
        uint128 refund = c.deposit - c.settled;
        if (paid > 0) IERC20(c.token).safeTransfer(c.payee, paid);
        if (refund > 0) IERC20(c.token).safeTransfer(c.payer, refund);
        emit ChannelClosed(channelId, c.settled, refund);
    }

    /// A 65-byte r‖s‖v or a 64-byte EIP-2098 signature by the authorized signer (the payer
    /// when none is set); OpenZeppelin's ECDSA refuses high-s and malformed signatures.
    function _checkVoucher(
        Channel storage c,
        bytes32 channelId,
        uint128 cumulativeAmount,
        bytes calldata signature
    ) private view {
        bytes32 digest = getVoucherDigest(channelId, cumulativeAmount);
        address signer;
        ECDSA.RecoverError err;
        if (signature.length == 64) {
            (signer, err,) = ECDSA.tryRecover(digest, bytes32(signature[0:32]), bytes32(signature[32:64]));
        } else {
            (signer, err,) = ECDSA.tryRecover(digest, signature);
        }
        address expected = c.authorizedSigner == address(0) ? c.payer : c.authorizedSigner;
        require(err == ECDSA.RecoverError.NoError && signer == expected, "MeterkitEscrow: invalid signature");
    }
}
