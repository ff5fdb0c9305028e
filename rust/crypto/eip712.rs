//! EIP-712 typed-data digests for the structs the payment layer signs or checks.
//!
//! Every struct here is hashed by hand (`keccak256(typeHash ‖ encoded fields)`, each field one
//! 32-byte ABI word) rather than through a generic typed-data encoder: the set of types is small
//! and fixed, and each one is pinned by a vector in the tests.

use super::{keccak256, parse_address, parse_bytes32, Address};

/// The domain type every digest here uses.
pub const DOMAIN_TYPE: &str =
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";
/// EIP-3009 (USDC and other FiatToken-style contracts): `transferWithAuthorization`.
pub const TRANSFER_WITH_AUTHORIZATION_TYPE: &str = "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)";
/// A payment-channel voucher: the payee may claim up to `cumulativeAmount` from the channel.
pub const VOUCHER_TYPE: &str = "Voucher(bytes32 channelId,uint96 cumulativeAmount)";
/// The EIP-712 domain name of the channel escrow contract.
pub const CHANNEL_DOMAIN_NAME: &str = "TIP20 Channel Reserve";
/// Its domain version.
pub const CHANNEL_DOMAIN_VERSION: &str = "1";

/// The voucher dialects of the payment-channel escrows: each has its own EIP-712 domain name
/// and amount width; the struct is otherwise the same `Voucher(bytes32 channelId, uintN
/// cumulativeAmount)`, domain version "1".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelProfile {
    /// Tempo's TIP-20 reserve (sessions v2): uint96.
    Tip20,
    /// The MPP `evm` session method, on any EVM chain: uint128.
    Evm,
    /// Tempo's v1 stream channel (the profile `mppx`'s legacy session client speaks): uint128.
    TempoV1,
}

impl ChannelProfile {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "tip20" => Ok(Self::Tip20),
            "evm" => Ok(Self::Evm),
            "tempo-v1" => Ok(Self::TempoV1),
            _ => Err(format!(
                "profile must be 'tip20', 'evm' or 'tempo-v1', got {name:?}"
            )),
        }
    }

    fn domain_name(self) -> &'static str {
        match self {
            Self::Tip20 => CHANNEL_DOMAIN_NAME,
            Self::Evm => "EVM Payment Channel",
            Self::TempoV1 => "Tempo Stream Channel",
        }
    }

    fn voucher_type(self) -> &'static str {
        match self {
            Self::Tip20 => VOUCHER_TYPE,
            Self::Evm | Self::TempoV1 => "Voucher(bytes32 channelId,uint128 cumulativeAmount)",
        }
    }

    fn amount(self, s: &str) -> Result<[u8; 32], String> {
        match self {
            Self::Tip20 => parse_uint96(s, "cumulative_amount"),
            Self::Evm | Self::TempoV1 => parse_uint128(s, "cumulative_amount"),
        }
    }
}

/// Largest decimal string accepted for a uint256 (2^256 - 1 has 78 digits).
const MAX_UINT256_DIGITS: usize = 78;

/// An address as an ABI word (left-padded with zeros).
fn address_word(a: &Address) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[12..].copy_from_slice(a);
    w
}

/// A u64 as an ABI uint256 word.
fn u64_word(v: u64) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[24..].copy_from_slice(&v.to_be_bytes());
    w
}

/// keccak256 of the concatenated 32-byte words.
fn hash_words(words: &[[u8; 32]]) -> [u8; 32] {
    keccak256(words.as_flattened())
}

/// Parse a decimal string (ASCII digits only, no sign, at most 78 digits) into a uint256 as a
/// 32-byte big-endian word; an error if it does not fit in 256 bits.
pub fn parse_uint256(s: &str, what: &str) -> Result<[u8; 32], String> {
    if s.is_empty() {
        return Err(format!(
            "{what} must be a decimal integer, got an empty string"
        ));
    }
    if s.len() > MAX_UINT256_DIGITS {
        return Err(format!(
            "{what} must be a decimal uint256 (at most {MAX_UINT256_DIGITS} digits), got {} characters",
            s.len()
        ));
    }
    // Little-endian 64-bit limbs; value = value * 10 + digit, watching the carry out.
    let mut limbs = [0u64; 4];
    for c in s.bytes() {
        if !c.is_ascii_digit() {
            return Err(format!(
                "{what} must be a decimal integer (digits 0-9 only), got {s:?}"
            ));
        }
        let mut carry = u128::from(c - b'0');
        for limb in &mut limbs {
            let t = u128::from(*limb) * 10 + carry;
            *limb = t as u64;
            carry = t >> 64;
        }
        if carry != 0 {
            return Err(format!("{what} does not fit in 256 bits: {s}"));
        }
    }
    let mut out = [0u8; 32];
    for (i, limb) in limbs.iter().rev().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_be_bytes());
    }
    Ok(out)
}

/// Parse a decimal uint96 (the voucher's amount) into its ABI word.
fn parse_uint96(s: &str, what: &str) -> Result<[u8; 32], String> {
    let w = parse_uint256(s, what)?;
    if w[..20].iter().any(|&b| b != 0) {
        return Err(format!("{what} does not fit in 96 bits (uint96): {s}"));
    }
    Ok(w)
}

fn parse_uint128(s: &str, what: &str) -> Result<[u8; 32], String> {
    let w = parse_uint256(s, what)?;
    if w[..16].iter().any(|&b| b != 0) {
        return Err(format!("{what} does not fit in 128 bits (uint128): {s}"));
    }
    Ok(w)
}

/// The EIP-712 domain separator of {name, version, chainId, verifyingContract}.
pub fn domain_separator(
    name: &str,
    version: &str,
    chain_id: u64,
    verifying_contract: &Address,
) -> [u8; 32] {
    hash_words(&[
        keccak256(DOMAIN_TYPE.as_bytes()),
        keccak256(name.as_bytes()),
        keccak256(version.as_bytes()),
        u64_word(chain_id),
        address_word(verifying_contract),
    ])
}

/// The digest that gets signed: keccak256(0x19 0x01 ‖ domainSeparator ‖ structHash).
pub fn typed_data_digest(domain_separator: &[u8; 32], struct_hash: &[u8; 32]) -> [u8; 32] {
    let mut buf = [0u8; 66];
    buf[..2].copy_from_slice(b"\x19\x01");
    buf[2..34].copy_from_slice(domain_separator);
    buf[34..].copy_from_slice(struct_hash);
    keccak256(&buf)
}

/// The EIP-712 digest of an EIP-3009 `TransferWithAuthorization` under the token's domain.
/// `value`, `valid_after` and `valid_before` are decimal uint256 strings; `nonce` is
/// "0x" + 64 hex digits; addresses are "0x" + 40 hex digits.
#[allow(clippy::too_many_arguments)]
pub fn eip3009_digest(
    name: &str,
    version: &str,
    chain_id: u64,
    verifying_contract: &str,
    from: &str,
    to: &str,
    value: &str,
    valid_after: &str,
    valid_before: &str,
    nonce: &str,
) -> Result<[u8; 32], String> {
    let contract = parse_address(verifying_contract, "verifying_contract")?;
    let struct_hash = hash_words(&[
        keccak256(TRANSFER_WITH_AUTHORIZATION_TYPE.as_bytes()),
        address_word(&parse_address(from, "from")?),
        address_word(&parse_address(to, "to")?),
        parse_uint256(value, "value")?,
        parse_uint256(valid_after, "valid_after")?,
        parse_uint256(valid_before, "valid_before")?,
        parse_bytes32(nonce, "nonce")?,
    ]);
    Ok(typed_data_digest(
        &domain_separator(name, version, chain_id, &contract),
        &struct_hash,
    ))
}

/// The EIP-712 digest of a payment-channel `Voucher(bytes32 channelId,uint96 cumulativeAmount)`
/// under the escrow's domain {"TIP20 Channel Reserve", "1", chainId, escrow}.
pub fn voucher_digest(
    chain_id: u64,
    escrow: &str,
    channel_id: &str,
    cumulative_amount: &str,
) -> Result<[u8; 32], String> {
    profile_voucher_digest(
        ChannelProfile::Tip20,
        chain_id,
        escrow,
        channel_id,
        cumulative_amount,
    )
}

/// The EIP-712 digest of a voucher in `profile`'s dialect, under the escrow's domain
/// {profile name, "1", chainId, escrow}.
pub fn profile_voucher_digest(
    profile: ChannelProfile,
    chain_id: u64,
    escrow: &str,
    channel_id: &str,
    cumulative_amount: &str,
) -> Result<[u8; 32], String> {
    let escrow = parse_address(escrow, "escrow")?;
    let struct_hash = hash_words(&[
        keccak256(profile.voucher_type().as_bytes()),
        parse_bytes32(channel_id, "channel_id")?,
        profile.amount(cumulative_amount)?,
    ]);
    Ok(typed_data_digest(
        &domain_separator(
            profile.domain_name(),
            CHANNEL_DOMAIN_VERSION,
            chain_id,
            &escrow,
        ),
        &struct_hash,
    ))
}

/// An `evm` session channel's id: keccak256(abi.encode(payer, payee, token, salt,
/// authorizedSigner, escrow, chainId)), what the escrow computes in `open`.
pub fn evm_channel_id(
    payer: &str,
    payee: &str,
    token: &str,
    salt: &str,
    authorized_signer: &str,
    escrow: &str,
    chain_id: u64,
) -> Result<[u8; 32], String> {
    Ok(hash_words(&[
        address_word(&parse_address(payer, "payer")?),
        address_word(&parse_address(payee, "payee")?),
        address_word(&parse_address(token, "token")?),
        parse_bytes32(salt, "salt")?,
        address_word(&parse_address(authorized_signer, "authorized_signer")?),
        address_word(&parse_address(escrow, "escrow")?),
        u64_word(chain_id),
    ]))
}

/// A payment channel's id: keccak256(abi.encode(payer, payee, operator, token, salt,
/// authorizedSigner, expiringNonceHash, escrow, chainId)), what the escrow contract computes.
#[allow(clippy::too_many_arguments)]
pub fn channel_id(
    payer: &str,
    payee: &str,
    operator: &str,
    token: &str,
    salt: &str,
    authorized_signer: &str,
    expiring_nonce_hash: &str,
    escrow: &str,
    chain_id: u64,
) -> Result<[u8; 32], String> {
    Ok(hash_words(&[
        address_word(&parse_address(payer, "payer")?),
        address_word(&parse_address(payee, "payee")?),
        address_word(&parse_address(operator, "operator")?),
        address_word(&parse_address(token, "token")?),
        parse_bytes32(salt, "salt")?,
        address_word(&parse_address(authorized_signer, "authorized_signer")?),
        parse_bytes32(expiring_nonce_hash, "expiring_nonce_hash")?,
        address_word(&parse_address(escrow, "escrow")?),
        u64_word(chain_id),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{recover_signer, to_hex, to_hex_prefixed};

    fn b32(s: &str) -> [u8; 32] {
        parse_bytes32(s, "test").unwrap()
    }

    fn addr(byte: u8) -> String {
        to_hex_prefixed(&[byte; 20])
    }

    #[test]
    fn profiles_differ_by_domain_and_width() {
        let ch = &to_hex_prefixed(&[0xab; 32]);
        let e = &addr(0x4d);
        let tip20 = voucher_digest(1, e, ch, "250").unwrap();
        assert_eq!(
            profile_voucher_digest(ChannelProfile::Tip20, 1, e, ch, "250").unwrap(),
            tip20
        );
        let evm = profile_voucher_digest(ChannelProfile::Evm, 1, e, ch, "250").unwrap();
        let tempo = profile_voucher_digest(ChannelProfile::TempoV1, 1, e, ch, "250").unwrap();
        assert!(evm != tip20 && tempo != evm && tempo != tip20);
        // 2^100 fits uint128, not uint96.
        let big = "1267650600228229401496703205376";
        assert!(profile_voucher_digest(ChannelProfile::Tip20, 1, e, ch, big).is_err());
        assert!(profile_voucher_digest(ChannelProfile::Evm, 1, e, ch, big).is_ok());
        let too_big = "340282366920938463463374607431768211456"; // 2^128
        assert!(profile_voucher_digest(ChannelProfile::Evm, 1, e, ch, too_big).is_err());
        assert!(ChannelProfile::parse("nope").is_err());
    }

    #[test]
    fn uint256_parsing() {
        assert_eq!(parse_uint256("0", "v").unwrap(), [0u8; 32]);
        assert_eq!(parse_uint256("0000", "v").unwrap(), [0u8; 32]);
        assert_eq!(parse_uint256("250", "v").unwrap()[31], 250);
        let w = parse_uint256("18446744073709551616", "v").unwrap(); // 2^64
        assert_eq!(to_hex(&w[16..]), "00000000000000010000000000000000");
        let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        assert_eq!(parse_uint256(max, "v").unwrap(), [0xff; 32]);
        // 2^256 and 10^77 * 2 overflow / too long / not digits.
        let over = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        assert_eq!(
            parse_uint256(over, "value").unwrap_err(),
            format!("value does not fit in 256 bits: {over}")
        );
        assert!(parse_uint256(&"9".repeat(78), "v").is_err());
        assert!(parse_uint256(&"0".repeat(79), "v").is_err());
        for bad in ["", "-1", "+1", "1.0", "1e3", " 1", "0x10", "１"] {
            assert!(parse_uint256(bad, "v").is_err(), "{bad:?}");
        }
        // Against u128 arithmetic on a spread of values.
        let mut x: u128 = 1;
        while x < u128::MAX / 7 {
            let w = parse_uint256(&x.to_string(), "v").unwrap();
            assert_eq!(w[..16], [0u8; 16]);
            assert_eq!(u128::from_be_bytes(w[16..].try_into().unwrap()), x);
            x = x * 7 + 3;
        }
    }

    #[test]
    fn uint96_bounds() {
        let max96 = ((1u128 << 96) - 1).to_string();
        assert!(parse_uint96(&max96, "a").is_ok());
        assert_eq!(
            parse_uint96(&(1u128 << 96).to_string(), "cumulative_amount").unwrap_err(),
            "cumulative_amount does not fit in 96 bits (uint96): 79228162514264337593543950336"
        );
    }

    /// The EIP-712 specification's "Ether Mail" example: domain separator, struct hash and
    /// digest as published in the EIP (and in every implementation's test suite).
    #[test]
    fn eip712_mail_vector() {
        let contract = parse_address("0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC", "c").unwrap();
        let sep = domain_separator("Ether Mail", "1", 1, &contract);
        assert_eq!(
            sep,
            b32("0xf2cee375fa42b42143804025fc449deafd50cc031ca257e0b194a650a912090f")
        );
        let person_type = keccak256(b"Person(string name,address wallet)");
        let person = |name: &str, wallet: &str| {
            hash_words(&[
                person_type,
                keccak256(name.as_bytes()),
                address_word(&parse_address(wallet, "w").unwrap()),
            ])
        };
        let mail = hash_words(&[
            keccak256(
                b"Mail(Person from,Person to,string contents)Person(string name,address wallet)",
            ),
            person("Cow", "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"),
            person("Bob", "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"),
            keccak256(b"Hello, Bob!"),
        ]);
        assert_eq!(
            mail,
            b32("0xc52c0ee5d84264471806290a3f2c4cecfc5490626bf912d01f240d7a274b371e")
        );
        assert_eq!(
            typed_data_digest(&sep, &mail),
            b32("0xbe609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2")
        );
    }

    const CHAIN: u64 = 42431;
    const ESCROW: &str = "0x4D50500000000000000000000000000000000000";
    const CHANNEL: &str = "0xba76934166855d51b0af261f57d3cd4bf48397c330f6e4b8804921b2ead973af";

    /// The published payment-channel vector: channel id, voucher digest, and the signer the
    /// voucher signature recovers to.
    #[test]
    fn channel_vector() {
        let salt = format!("0x{}01", "00".repeat(31));
        let nonce_hash = to_hex_prefixed(&[0xaa; 32]);
        let id = channel_id(
            &addr(0x11),
            &addr(0x22),
            &addr(0x33),
            &addr(0x44),
            &salt,
            &addr(0x55),
            &nonce_hash,
            ESCROW,
            CHAIN,
        )
        .unwrap();
        assert_eq!(to_hex_prefixed(&id), CHANNEL);

        let digest = voucher_digest(CHAIN, ESCROW, CHANNEL, "250").unwrap();
        assert_eq!(
            to_hex_prefixed(&digest),
            "0x18777f09088d7ef13e661ecfdab7136ffa73ec6b6b8899dbf7d045a4f4000fbb"
        );
        let sig = crate::crypto::parse_hex_fixed::<65>(
            "0x79821beae485bfbf233c1c54147c6aa098b54c9bf1be62294c28ec58b9ab32791eca9519b3f79899fe0bee0cc67e4b7adb75b113da98226f12ee1c13c12c5c1e1c",
            "sig",
        )
        .unwrap();
        assert_eq!(
            crate::crypto::checksum_address(&recover_signer(&digest, &sig).unwrap()),
            "0x3A6b8d15bfae3cf58A92879325Fa70f762C202eD"
        );
        // Another amount, chain or escrow gives another digest.
        assert_ne!(
            voucher_digest(CHAIN, ESCROW, CHANNEL, "251").unwrap(),
            digest
        );
        assert_ne!(
            voucher_digest(CHAIN + 1, ESCROW, CHANNEL, "250").unwrap(),
            digest
        );
        assert_ne!(
            voucher_digest(CHAIN, &addr(0x4d), CHANNEL, "250").unwrap(),
            digest
        );
    }

    #[test]
    fn eip3009_structure() {
        // The digest is the generic typed-data digest of the struct hash spelled out here; the
        // end-to-end value is cross-checked against eth-account (see the test below).
        let usdc = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";
        let nonce = to_hex_prefixed(&[0x42; 32]);
        let got = eip3009_digest(
            "USD Coin",
            "2",
            1,
            usdc,
            &addr(0x11),
            &addr(0x22),
            "1000000",
            "0",
            "1700000000",
            &nonce,
        )
        .unwrap();
        let mut value = [0u8; 32];
        value[29..].copy_from_slice(&[0x0f, 0x42, 0x40]);
        let mut before = [0u8; 32];
        before[28..].copy_from_slice(&1_700_000_000u32.to_be_bytes());
        let struct_hash = hash_words(&[
            keccak256(TRANSFER_WITH_AUTHORIZATION_TYPE.as_bytes()),
            address_word(&[0x11; 20]),
            address_word(&[0x22; 20]),
            value,
            [0u8; 32],
            before,
            [0x42; 32],
        ]);
        let sep = domain_separator("USD Coin", "2", 1, &parse_address(usdc, "c").unwrap());
        assert_eq!(got, typed_data_digest(&sep, &struct_hash));
    }

    #[test]
    fn eip3009_reference_value() {
        // Computed independently with eth-account 0.14 (encode_typed_data, then keccak) for the
        // same inputs as `eip3009_structure`.
        let got = eip3009_digest(
            "USD Coin",
            "2",
            1,
            "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
            &addr(0x11),
            &addr(0x22),
            "1000000",
            "0",
            "1700000000",
            &to_hex_prefixed(&[0x42; 32]),
        )
        .unwrap();
        assert_eq!(to_hex_prefixed(&got), EIP3009_REFERENCE);
    }

    const EIP3009_REFERENCE: &str =
        "0x155309bbb9c2198919bc10cdab2e46517dfcb40ae686e1a977f4e293b21a35d7";

    #[test]
    fn input_errors_name_the_field() {
        let ok = to_hex_prefixed(&[0; 32]);
        let e = eip3009_digest("n", "1", 1, &addr(1), "0x12", &addr(2), "1", "0", "9", &ok)
            .unwrap_err();
        assert!(
            e.starts_with("from must be 0x followed by 40 hex digits"),
            "{e}"
        );
        let e = eip3009_digest(
            "n",
            "1",
            1,
            &addr(1),
            &addr(1),
            &addr(2),
            "1",
            "0",
            "9",
            "0x1",
        )
        .unwrap_err();
        assert!(
            e.starts_with("nonce must be 0x followed by 64 hex digits"),
            "{e}"
        );
        let e = eip3009_digest(
            "n",
            "1",
            1,
            &addr(1),
            &addr(1),
            &addr(2),
            "-1",
            "0",
            "9",
            &ok,
        )
        .unwrap_err();
        assert!(e.starts_with("value must be a decimal integer"), "{e}");
        let e = voucher_digest(1, &addr(1), "0x", "1").unwrap_err();
        assert!(e.starts_with("channel_id must be"), "{e}");
        let e = channel_id(
            &addr(1),
            &addr(1),
            &addr(1),
            &addr(1),
            &ok,
            &addr(1),
            "zz",
            &addr(1),
            1,
        )
        .unwrap_err();
        assert!(e.starts_with("expiring_nonce_hash must be"), "{e}");
    }
}
