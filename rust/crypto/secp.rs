//! secp256k1 ECDSA the Ethereum way: recovery on libsecp256k1 (the `secp256k1` crate), signing
//! and key derivation on `k256`.
//!
//! Recovery accepts the 65-byte `r ‖ s ‖ v` form (v in {27, 28} or {0, 1}) and the 64-byte
//! EIP-2098 compact form (`r ‖ yParityAndS`, the parity in the top bit of the second word).
//! Signatures with a high s (s > n/2) are refused, as Ethereum does since EIP-2 and as
//! OpenZeppelin's ECDSA.recover does: otherwise (r, n - s) with the other parity would be a
//! second valid signature of the same message by the same key.
//!
//! Performance notes (recoveries per second through the binding, one thread, 2,000 distinct
//! signatures, best of 5-7; this shared 2-core machine moves every figure by +-30% between
//! runs, so pairs were alternated in fresh processes):
//! - `k256` 0.14 `VerifyingKey::recover_from_prehash`: 7.6k-11.5k/s where libsecp256k1 through
//!   `coincurve` plus pycryptodome's keccak did ~16k/s (issue 14 quoted 18k vs 32k on a
//!   quieter machine). k256 uses a generic double-scalar multiplication and verifies the
//!   recovered key again; libsecp256k1 splits scalars with the GLV endomorphism and uses
//!   large precomputed tables.
//! - Kept: libsecp256k1 through the `secp256k1` crate (its C sources compiled by `cc`, no
//!   system library): 12k-20k/s, ahead of coincurve + keccak in 5 of 6 alternated pairs
//!   (1.1-1.3x; the recorded `meterkit bench payments` run: 12.8k vs 11.0k/s). Both are the
//!   same C library, so the margin is call overhead. The range, low-s and parity rules stay
//!   here, in the same order and with the same errors, before the library sees the
//!   signature: r and s in [1, n), s <= n/2, v's parity as the recovery id.
//! - Not tried: precomputed tables for k256 (more code for at best libsecp256k1's speed).
//!   Signing stays on k256: it is not on a hot path and its RFC 6979 output is pinned by the
//!   published vectors below.

use std::fmt;

use k256::ecdsa::{SigningKey, VerifyingKey};

use super::{keccak256, Address};

/// Why a signature did not recover to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoverError {
    /// Neither 65 nor 64 bytes.
    Length(usize),
    /// The 65-byte form's last byte is not 27, 28, 0 or 1.
    RecoveryByte(u8),
    /// r or s is zero or not below the group order n.
    ScalarOutOfRange,
    /// s > n/2: the malleable twin of a low-s signature.
    HighS,
    /// r is not the x coordinate of a curve point, or the recovered key is the identity.
    NoKey,
}

impl fmt::Display for RecoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoverError::Length(n) => write!(
                f,
                "signature must be 65 bytes (r, s, v) or 64 bytes (EIP-2098 compact), got {n} bytes"
            ),
            RecoverError::RecoveryByte(v) => {
                write!(f, "signature v must be 27, 28, 0 or 1, got {v}")
            }
            RecoverError::ScalarOutOfRange => f.write_str(
                "signature r and s must be non-zero and below the secp256k1 group order",
            ),
            RecoverError::HighS => {
                f.write_str("signature s value is not low (malleable signature)")
            }
            RecoverError::NoKey => {
                f.write_str("no public key recovers from this signature and digest")
            }
        }
    }
}

impl std::error::Error for RecoverError {}

/// A secret key that is zero or not below the group order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidSecretKey;

impl fmt::Display for InvalidSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("secret key must be a non-zero integer below the secp256k1 group order")
    }
}

impl std::error::Error for InvalidSecretKey {}

/// The Ethereum address of a public key: the last 20 bytes of keccak256 of the uncompressed
/// point without its 0x04 prefix.
fn address_of_key(key: &VerifyingKey) -> Address {
    let point = key.to_sec1_point(false);
    let hash = keccak256(&point.as_bytes()[1..]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    out
}

/// The address that signed `digest` (a keccak256 output such as an EIP-712 digest).
pub fn recover_signer(digest: &[u8; 32], signature: &[u8]) -> Result<Address, RecoverError> {
    if signature.len() != 65 && signature.len() != 64 {
        return Err(RecoverError::Length(signature.len()));
    }
    let mut r = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    let mut s = [0u8; 32];
    s.copy_from_slice(&signature[32..64]);
    let y_odd = match signature.get(64) {
        Some(27 | 0) => false,
        Some(28 | 1) => true,
        Some(&v) => return Err(RecoverError::RecoveryByte(v)),
        // EIP-2098: the y parity is the top bit of the second word (s < n/2 < 2^255 leaves
        // it free).
        None => {
            let odd = s[0] & 0x80 != 0;
            s[0] &= 0x7f;
            odd
        }
    };
    if !scalar_in_range(&r) || !scalar_in_range(&s) {
        return Err(RecoverError::ScalarOutOfRange);
    }
    if s > HALF_ORDER {
        return Err(RecoverError::HighS);
    }
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&r);
    compact[32..].copy_from_slice(&s);
    // Ethereum's v carries only the y parity; r is always taken as the x coordinate itself
    // (the "x reduced" case has probability about 2^-128 and is not representable).
    let recid = secp256k1::ecdsa::RecoveryId::from_u8_masked(u8::from(y_odd));
    let sig = secp256k1::ecdsa::RecoverableSignature::from_compact(&compact, recid)
        .map_err(|_| RecoverError::ScalarOutOfRange)?;
    // The digest is reduced mod n by the library, as k256 and the EVM's ecrecover do.
    let key = sig
        .recover_ecdsa(secp256k1::Message::from_digest(*digest))
        .map_err(|_| RecoverError::NoKey)?;
    let point = key.serialize_uncompressed();
    let hash = keccak256(&point[1..]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    Ok(out)
}

/// The secp256k1 group order n, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

/// floor(n / 2), big-endian: the largest low s.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// 0 < x < n, for a big-endian 256-bit word (arrays compare lexicographically).
fn scalar_in_range(x: &[u8; 32]) -> bool {
    *x != [0u8; 32] && *x < ORDER
}

fn signing_key(secret_key: &[u8; 32]) -> Result<SigningKey, InvalidSecretKey> {
    SigningKey::from_slice(secret_key).map_err(|_| InvalidSecretKey)
}

/// Sign a 32-byte digest: deterministic k (RFC 6979), low s, returned as r ‖ s ‖ v with
/// v = 27 + y parity.
pub fn sign_digest(secret_key: &[u8; 32], digest: &[u8; 32]) -> Result<[u8; 65], InvalidSecretKey> {
    let key = signing_key(secret_key)?;
    let (sig, recid) = key.sign_prehash_recoverable(digest);
    // Not representable in Ethereum's v. The chance is about 2^-128 per signature (the x
    // coordinate of k·G would have to lie in [n, p)); we never expect to see it.
    assert!(
        !recid.is_x_reduced(),
        "ECDSA signature with an x-reduced recovery id"
    );
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&sig.to_bytes());
    out[64] = 27 + u8::from(recid.is_y_odd());
    Ok(out)
}

/// The Ethereum address of a secret key.
pub fn address_of(secret_key: &[u8; 32]) -> Result<Address, InvalidSecretKey> {
    Ok(address_of_key(signing_key(secret_key)?.verifying_key()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{checksum_address, parse_hex_fixed, to_hex_prefixed};

    const VOUCHER_DIGEST: &str =
        "0x18777f09088d7ef13e661ecfdab7136ffa73ec6b6b8899dbf7d045a4f4000fbb";
    const VOUCHER_SIG: &str = "0x79821beae485bfbf233c1c54147c6aa098b54c9bf1be62294c28ec58b9ab32791eca9519b3f79899fe0bee0cc67e4b7adb75b113da98226f12ee1c13c12c5c1e1c";
    const VOUCHER_SIGNER: &str = "0x3A6b8d15bfae3cf58A92879325Fa70f762C202eD";
    /// secp256k1 group order n.
    const N: &str = "0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";

    fn h32(s: &str) -> [u8; 32] {
        parse_hex_fixed::<32>(s, "test").unwrap()
    }

    fn recover(digest: &[u8; 32], sig: &[u8]) -> Result<String, RecoverError> {
        recover_signer(digest, sig).map(|a| checksum_address(&a))
    }

    /// a - b for 256-bit big-endian words (a >= b).
    fn sub(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
            borrow = i16::from(d < 0);
            if d < 0 {
                d += 256;
            }
            out[i] = d as u8;
        }
        assert_eq!(borrow, 0);
        out
    }

    fn vector() -> ([u8; 32], [u8; 65]) {
        (
            h32(VOUCHER_DIGEST),
            parse_hex_fixed::<65>(VOUCHER_SIG, "sig").unwrap(),
        )
    }

    #[test]
    fn published_voucher_signature() {
        let (digest, sig) = vector();
        assert_eq!(recover(&digest, &sig).unwrap(), VOUCHER_SIGNER);
        // v as 0/1.
        let mut sig01 = sig;
        sig01[64] -= 27;
        assert_eq!(recover(&digest, &sig01).unwrap(), VOUCHER_SIGNER);
        // The other parity is someone else (or nobody).
        let mut flipped = sig;
        flipped[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_ne!(
            recover(&digest, &flipped).ok().as_deref(),
            Some(VOUCHER_SIGNER)
        );
        // Another digest is someone else.
        let mut other = digest;
        other[0] ^= 1;
        assert_ne!(recover(&other, &sig).ok().as_deref(), Some(VOUCHER_SIGNER));
    }

    #[test]
    fn eip2098_compact_form() {
        let (digest, sig) = vector();
        let mut compact = [0u8; 64];
        compact.copy_from_slice(&sig[..64]);
        if sig[64] == 28 {
            compact[32] |= 0x80;
        }
        assert_eq!(recover(&digest, &compact).unwrap(), VOUCHER_SIGNER);
    }

    /// The EIP-2098 specification's examples: key 0x1234…1234 signs two EIP-191 personal
    /// messages; the published r, s, v and compact yParityAndS (one of each parity).
    #[test]
    fn eip2098_spec_vectors() {
        let key = h32("0x1234567890123456789012345678901234567890123456789012345678901234");
        let signer = "0x2e988A386a799F506693793c6A5AF6B54dfAaBfB";
        assert_eq!(checksum_address(&address_of(&key).unwrap()), signer);
        let cases = [
            (
                "Hello World",
                "0x68a020a209d3d56c46f38cc50a33f704f4a9a10a59377f8dd762ac66910e9b90",
                "0x7e865ad05c4035ab5792787d4a0297a43617ae897930a6fe4d822b8faea52064",
                27u8,
                "0x7e865ad05c4035ab5792787d4a0297a43617ae897930a6fe4d822b8faea52064",
            ),
            (
                "It's a small(er) world",
                "0x9328da16089fcba9bececa81663203989f2df5fe1faa6291a45381c81bd17f76",
                "0x139c6d6b623b42da56557e5e734a43dc83345ddfadec52cbe24d0cc64f550793",
                28,
                "0x939c6d6b623b42da56557e5e734a43dc83345ddfadec52cbe24d0cc64f550793",
            ),
        ];
        for (msg, r, s, v, y_parity_and_s) in cases {
            let digest =
                keccak256(format!("\x19Ethereum Signed Message:\n{}{msg}", msg.len()).as_bytes());
            let mut full = [0u8; 65];
            full[..32].copy_from_slice(&h32(r));
            full[32..64].copy_from_slice(&h32(s));
            full[64] = v;
            assert_eq!(sign_digest(&key, &digest).unwrap(), full, "{msg}");
            let mut compact = [0u8; 64];
            compact[..32].copy_from_slice(&h32(r));
            compact[32..].copy_from_slice(&h32(y_parity_and_s));
            assert_eq!(recover(&digest, &full).unwrap(), signer);
            assert_eq!(recover(&digest, &compact).unwrap(), signer);
        }
    }

    #[test]
    fn high_s_is_rejected() {
        let (digest, sig) = vector();
        let s: [u8; 32] = sig[32..64].try_into().unwrap();
        let mut high = sig;
        high[32..64].copy_from_slice(&sub(&h32(N), &s));
        high[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_eq!(recover_signer(&digest, &high), Err(RecoverError::HighS));
        assert_eq!(
            RecoverError::HighS.to_string(),
            "signature s value is not low (malleable signature)"
        );
        // n/2 itself is low, n/2 + 1 is high (boundary).
        let half = h32("0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0");
        let mut at = sig;
        at[32..64].copy_from_slice(&half);
        assert_ne!(recover_signer(&digest, &at), Err(RecoverError::HighS));
        let mut above = half;
        above[31] += 1;
        at[32..64].copy_from_slice(&above);
        assert_eq!(recover_signer(&digest, &at), Err(RecoverError::HighS));
    }

    #[test]
    fn malformed_signatures() {
        let (digest, sig) = vector();
        for n in [0, 1, 63, 66, 130] {
            assert_eq!(
                recover_signer(&digest, &vec![1u8; n]),
                Err(RecoverError::Length(n))
            );
        }
        for v in [2u8, 26, 29, 35, 36, 255] {
            let mut bad = sig;
            bad[64] = v;
            assert_eq!(
                recover_signer(&digest, &bad),
                Err(RecoverError::RecoveryByte(v))
            );
        }
        // r = 0, s = 0, r = n.
        let mut bad = sig;
        bad[..32].fill(0);
        assert_eq!(
            recover_signer(&digest, &bad),
            Err(RecoverError::ScalarOutOfRange)
        );
        let mut bad = sig;
        bad[32..64].fill(0);
        assert_eq!(
            recover_signer(&digest, &bad),
            Err(RecoverError::ScalarOutOfRange)
        );
        let mut bad = sig;
        bad[..32].copy_from_slice(&h32(N));
        assert_eq!(
            recover_signer(&digest, &bad),
            Err(RecoverError::ScalarOutOfRange)
        );
        // r = 5 is not the x coordinate of any point on secp256k1 (5^3 + 7 = 132 is a
        // non-residue mod p), so nothing recovers.
        let mut bad = sig;
        bad[..32].fill(0);
        bad[31] = 5;
        assert_eq!(recover_signer(&digest, &bad), Err(RecoverError::NoKey));
    }

    #[test]
    fn well_known_key_address() {
        // eth-account's documentation example key.
        let key = h32("0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");
        assert_eq!(
            checksum_address(&address_of(&key).unwrap()),
            "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
        );
        // Private key 1: the generator point's address.
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(
            checksum_address(&address_of(&one).unwrap()),
            "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
        );
        assert_eq!(address_of(&[0u8; 32]), Err(InvalidSecretKey));
        assert_eq!(address_of(&h32(N)), Err(InvalidSecretKey));
        assert_eq!(sign_digest(&[0u8; 32], &[1u8; 32]), Err(InvalidSecretKey));
    }

    /// The EIP-712 specification's example signature: key keccak256("cow"), digest of the
    /// "Ether Mail" message, v = 28 and the published r, s (deterministic RFC 6979 signing).
    #[test]
    fn eip712_spec_signature() {
        let key = keccak256(b"cow");
        let digest = h32("0xbe609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2");
        let sig = sign_digest(&key, &digest).unwrap();
        assert_eq!(
            to_hex_prefixed(&sig),
            "0x4355c47d63924e8a72e509b65029052eb6c299d53a04e167c5775fd466751c9d\
             07299936d304c153f6443dfa05f40ff007d72911b6f72307f996231605b91562\
             1c"
        );
        let who = "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826";
        assert_eq!(checksum_address(&address_of(&key).unwrap()), who);
        assert_eq!(recover(&digest, &sig).unwrap(), who);
    }

    #[test]
    fn sign_recover_round_trip() {
        let mut key = keccak256(b"meterkit round trip");
        for i in 0u32..32 {
            let digest = keccak256(&i.to_be_bytes());
            let sig = sign_digest(&key, &digest).unwrap();
            assert!(sig[64] == 27 || sig[64] == 28);
            // Low s: the top bit of s is clear (n/2 < 2^255), and recovery accepts it.
            assert_eq!(sig[32] & 0x80, 0);
            assert_eq!(recover_signer(&digest, &sig), Ok(address_of(&key).unwrap()));
            // Deterministic.
            assert_eq!(sign_digest(&key, &digest).unwrap(), sig);
            key = keccak256(&key);
        }
    }
}
