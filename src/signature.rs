//! Conversion request signatures (SPEC §3.2):
//! `X-Touchline-Signature: t={unix seconds},v1={hex HMAC-SHA256(secret, "{t}.{body}")}`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the signature header.
pub const HEADER: &str = "x-touchline-signature";

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Touchline-Signature header")]
    Missing,
    #[error("malformed X-Touchline-Signature header")]
    Malformed,
    #[error("signature timestamp outside the accepted window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The header value signing `body` at time `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let digest = mac(secret.as_bytes(), t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(digest))
}

/// Verifies a header value against `body` at time `now`, in constant time.
pub fn verify(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            // Several v1 values are allowed, for secret rotation on the merchant's side.
            Some(("v1", v)) => v1.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(t) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret.as_bytes(), t, body);
    if v1
        .iter()
        .any(|sig| expected.clone().verify_slice(sig).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Compares secrets without leaking where they differ (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let body = br#"{"order_id":"1"}"#;
        let h = sign("s3cret", 1_000, body);
        assert_eq!(verify("s3cret", Some(&h), body, 1_000, 300), Ok(()));
        assert_eq!(verify("s3cret", Some(&h), body, 1_300, 300), Ok(()));
        assert_eq!(
            verify("s3cret", Some(&h), body, 1_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("s3cret", Some(&h), body, 699, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("other", Some(&h), body, 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", Some(&h), b"{}", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("s3cret", None, body, 1_000, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify("s3cret", Some("t=x,v1=00"), body, 1_000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify("s3cret", Some("t=1000"), body, 1_000, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256("key", "1.x") computed independently (Python hmac module).
        assert_eq!(
            sign("key", 1, b"x"),
            "t=1,v1=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
        );
    }
}
