//! The MPP challenge id (IETF draft-httpauth-payment): a server binds the parameters of a
//! `WWW-Authenticate: Payment` challenge to itself without keeping state.
//!
//! id = base64url-nopad(HMAC-SHA256(secret, realm|method|intent|request|expires|digest|opaque))
//!
//! Absent optional parameters are empty strings. The `request` slot holds the request
//! parameter exactly as it goes on the wire: the base64url-nopad encoding of the JCS
//! (RFC 8785) JSON, not the JSON itself. The published vectors only match that way (checked:
//! with the raw JSON `{"amount":"1000000"}` the first vector gives
//! `_TBtqneNWMNxw8TAaWMRiwkI4DYSA08fe2-wjrz9fzA`, not the published id).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], fields: [&str; 7]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            m.update(b"|");
        }
        m.update(f.as_bytes());
    }
    m.finalize().into_bytes().into()
}

/// The challenge id for these parameters (43 characters of base64url, no padding).
#[allow(clippy::too_many_arguments)]
pub fn challenge_id(
    secret: &[u8],
    realm: &str,
    method: &str,
    intent: &str,
    request: &str,
    expires: &str,
    digest: &str,
    opaque: &str,
) -> String {
    URL_SAFE_NO_PAD.encode(mac(
        secret,
        [realm, method, intent, request, expires, digest, opaque],
    ))
}

/// Whether `id` is the challenge id of these parameters. The MAC comparison is constant time;
/// an id that is not 43 characters of base64url-nopad is rejected before it.
#[allow(clippy::too_many_arguments)]
pub fn verify_challenge_id(
    secret: &[u8],
    id: &str,
    realm: &str,
    method: &str,
    intent: &str,
    request: &str,
    expires: &str,
    digest: &str,
    opaque: &str,
) -> bool {
    let Ok(given) = URL_SAFE_NO_PAD.decode(id) else {
        return false;
    };
    // The canonical encoding only: base64 decoders may accept non-zero trailing bits, which
    // would give several spellings of one id.
    if given.len() != 32 || URL_SAFE_NO_PAD.encode(&given) != id {
        return false;
    }
    let expected = mac(
        secret,
        [realm, method, intent, request, expires, digest, opaque],
    );
    expected.ct_eq(&given[..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-vector-secret";
    // base64url-nopad of {"amount":"1000000"} and of {}.
    const AMOUNT_WIRE: &str = "eyJhbW91bnQiOiIxMDAwMDAwIn0";
    const EMPTY_WIRE: &str = "e30";

    #[test]
    fn wire_forms() {
        assert_eq!(
            URL_SAFE_NO_PAD.encode(br#"{"amount":"1000000"}"#),
            AMOUNT_WIRE
        );
        assert_eq!(URL_SAFE_NO_PAD.encode(b"{}"), EMPTY_WIRE);
    }

    #[test]
    fn published_vectors() {
        let cases = [
            (
                AMOUNT_WIRE,
                "",
                "X6v1eo7fJ76gAxqY0xN9Jd__4lUyDDYmriryOM-5FO4",
            ),
            (
                AMOUNT_WIRE,
                "2025-01-06T12:00:00Z",
                "ChPX33RkKSZoSUyZcu8ai4hhkvjZJFkZVnvWs5s0iXI",
            ),
            (
                EMPTY_WIRE,
                "",
                "yLN7yChAejW9WNmb54HpJIWpdb1WWXeA3_aCx4dxmkU",
            ),
        ];
        for (request, expires, id) in cases {
            let got = challenge_id(
                SECRET,
                "api.example.com",
                "tempo",
                "charge",
                request,
                expires,
                "",
                "",
            );
            assert_eq!(got, id);
            assert!(verify_challenge_id(
                SECRET,
                id,
                "api.example.com",
                "tempo",
                "charge",
                request,
                expires,
                "",
                ""
            ));
        }
    }

    #[test]
    fn raw_json_in_request_slot_does_not_match() {
        let got = challenge_id(
            SECRET,
            "api.example.com",
            "tempo",
            "charge",
            r#"{"amount":"1000000"}"#,
            "",
            "",
            "",
        );
        assert_ne!(got, "X6v1eo7fJ76gAxqY0xN9Jd__4lUyDDYmriryOM-5FO4");
    }

    #[test]
    fn verify_rejects() {
        let id = "X6v1eo7fJ76gAxqY0xN9Jd__4lUyDDYmriryOM-5FO4";
        let ok = |secret: &[u8], id: &str, realm: &str, opaque: &str| {
            verify_challenge_id(
                secret,
                id,
                realm,
                "tempo",
                "charge",
                AMOUNT_WIRE,
                "",
                "",
                opaque,
            )
        };
        assert!(ok(SECRET, id, "api.example.com", ""));
        assert!(!ok(b"other-secret", id, "api.example.com", ""));
        assert!(!ok(SECRET, id, "api.example.org", ""));
        assert!(!ok(SECRET, id, "api.example.com", "x"));
        // Padded, truncated, standard-alphabet and non-canonical spellings.
        assert!(!ok(SECRET, &format!("{id}="), "api.example.com", ""));
        assert!(!ok(SECRET, &id[..42], "api.example.com", ""));
        assert!(!ok(SECRET, &id.replace('_', "/"), "api.example.com", ""));
        // Last character '4' (0b111000) carries 4 bits and 2 zero fill bits; '5' (0b111001)
        // names the same bytes with a non-zero fill bit. Not the canonical id, refused.
        assert!(!ok(
            SECRET,
            &format!("{}5", &id[..42]),
            "api.example.com",
            ""
        ));
        assert!(!ok(SECRET, "", "api.example.com", ""));
    }
}
