//! Cryptography for the payment layer (HTTP 402): pure Rust on RustCrypto crates.
//!
//! - `hmac_id`: the MPP challenge id of draft-httpauth-payment (HMAC-SHA256, base64url).
//! - `eip712`: EIP-712 typed-data digests: EIP-3009 `TransferWithAuthorization`, payment
//!   channel vouchers, and the channel id.
//! - `secp`: secp256k1 ECDSA the Ethereum way: sign a 32-byte digest (RFC 6979, low-s) and
//!   recover the signer's address (65-byte `r‖s‖v` and 64-byte EIP-2098 forms, high-s refused).
//!
//! This module also holds the Ethereum primitives they share: Keccak-256, hex, addresses
//! (parsing and EIP-55 checksums) and 32-byte words.

pub mod eip712;
pub mod hmac_id;
pub mod secp;

pub use eip712::{
    channel_id, domain_separator, eip3009_digest, evm_channel_id, parse_uint256,
    profile_voucher_digest, typed_data_digest, voucher_digest, ChannelProfile,
};
pub use hmac_id::{challenge_id, verify_challenge_id};
pub use secp::{address_of, recover_signer, sign_digest, InvalidSecretKey, RecoverError};

use sha3::{Digest, Keccak256};

/// An Ethereum address.
pub type Address = [u8; 20];

/// Keccak-256 (the original Keccak padding Ethereum uses, not FIPS 202 SHA3-256).
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}

/// Lowercase hex, no prefix.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// "0x" + lowercase hex.
pub fn to_hex_prefixed(bytes: &[u8]) -> String {
    format!("0x{}", to_hex(bytes))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parse exactly "0x" followed by `2 * N` hex digits (either case). `what` names the value in
/// the error message.
pub fn parse_hex_fixed<const N: usize>(s: &str, what: &str) -> Result<[u8; N], String> {
    let expected = || format!("{what} must be 0x followed by {} hex digits", 2 * N);
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| format!("{}, got {s:?}", expected()))?;
    if digits.len() != 2 * N {
        return Err(format!(
            "{}, got {} digits in {s:?}",
            expected(),
            digits.len()
        ));
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.as_bytes().chunks_exact(2).enumerate() {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = (hi << 4) | lo,
            _ => return Err(format!("{}, got a non-hex character in {s:?}", expected())),
        }
    }
    Ok(out)
}

/// Parse an address: "0x" + 40 hex digits in any case. The EIP-55 checksum of a mixed-case
/// address is not enforced (compare with `checksum_address` when it matters).
pub fn parse_address(s: &str, what: &str) -> Result<Address, String> {
    parse_hex_fixed::<20>(s, what)
}

/// Parse a bytes32 value: "0x" + 64 hex digits.
pub fn parse_bytes32(s: &str, what: &str) -> Result<[u8; 32], String> {
    parse_hex_fixed::<32>(s, what)
}

/// EIP-55 mixed-case checksum encoding: a hex letter is uppercase when the matching nibble of
/// keccak256(lowercase hex address) is 8 or more.
pub fn checksum_address(address: &Address) -> String {
    let lower = to_hex(address);
    let hash = keccak256(lower.as_bytes());
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (i, c) in lower.chars().enumerate() {
        let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
        out.push(if nibble >= 8 {
            c.to_ascii_uppercase()
        } else {
            c
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keccak_vectors() {
        // keccak256("") and keccak256("abc"): the Keccak team's / Ethereum's values.
        assert_eq!(
            to_hex(&keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
        assert_eq!(
            to_hex(&keccak256(b"abc")),
            "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
        );
    }

    #[test]
    fn eip55_vectors() {
        // The test cases listed in EIP-55.
        for a in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
            "0x52908400098527886E0F7030069857D2E4169EE7",
            "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
            "0xde709f2102306220921060314715629080e2fb77",
            "0x27b1fdb04752bbc536007a920d24acb045561c26",
        ] {
            let parsed = parse_address(a, "address").unwrap();
            assert_eq!(checksum_address(&parsed), a);
            let lower = parse_address(&a.to_ascii_lowercase(), "address").unwrap();
            assert_eq!(lower, parsed);
        }
    }

    #[test]
    fn address_parse_errors() {
        assert!(parse_address("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "a").is_err());
        assert!(parse_address("0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "a").is_err());
        assert!(parse_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe", "a").is_err());
        assert!(parse_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAedd", "a").is_err());
        assert!(parse_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg", "a").is_err());
        assert!(parse_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAé", "a").is_err());
        let e = parse_address("0x12", "payer").unwrap_err();
        assert_eq!(
            e,
            "payer must be 0x followed by 40 hex digits, got 2 digits in \"0x12\""
        );
    }
}
