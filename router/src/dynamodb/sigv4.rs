//! AWS Signature Version 4 verification for the DynamoDB endpoint.
//!
//! A request carries `Authorization: AWS4-HMAC-SHA256 Credential=KEY/DATE/
//! REGION/SERVICE/aws4_request, SignedHeaders=a;b;c, Signature=HEX` and an
//! `X-Amz-Date`. We rebuild the canonical request from what arrived,
//! derive the signing key from the secret we hold for KEY, and compare
//! signatures in constant time. Anything missing or different is refused
//! before the request is read further.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature was refused, named as DynamoDB names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable signature, or an unknown access key.
    #[error("UnrecognizedClientException: {0}")]
    Unrecognized(String),
    /// The signature does not match.
    #[error("InvalidSignatureException: {0}")]
    InvalidSignature(String),
}

/// The parts of an HTTP request a signature covers.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Header names in any case; values as received.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Lowercase hex, without a formatting call (and a String) per byte: a
/// request's signature check hexes three digests.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xF)]));
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How far a request's `X-Amz-Date` may be from `now`, as in AWS.
pub const CLOCK_SKEW_MAX_SECS: u64 = 15 * 60;

/// `YYYYMMDDTHHMMSSZ` for a Unix time.
pub fn amz_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let seconds = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The Unix time of a `YYYYMMDDTHHMMSSZ` stamp.
pub fn parse_amz_date(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days since 1970-01-01 from a civil date (inverse of the above).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// Checks the request's signature against `secrets` (access key → secret),
/// and its date against `now_unix_secs`.
pub fn verify(
    request: &SignedRequest<'_>,
    secrets: &HashMap<String, String>,
    now_unix_secs: u64,
) -> Result<(), AuthError> {
    let unrecognized = |m: &str| AuthError::Unrecognized(m.to_owned());
    let authorization = header(request.headers, "authorization")
        .ok_or_else(|| unrecognized("The request is not signed (no Authorization header)."))?;
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| unrecognized("Only AWS4-HMAC-SHA256 signatures are accepted."))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in fields.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(unrecognized("The Authorization header is incomplete."));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = scope.as_slice() else {
        return Err(unrecognized("The credential scope is malformed."));
    };
    if *terminator != "aws4_request" {
        return Err(unrecognized("The credential scope is malformed."));
    }
    let secret = secrets
        .get(*access_key)
        .ok_or_else(|| unrecognized("The security token included in the request is invalid."))?;
    let amz_date = header(request.headers, "x-amz-date")
        .ok_or_else(|| unrecognized("X-Amz-Date is missing."))?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        AuthError::InvalidSignature(format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ."))
    })?;
    if signed_at.abs_diff(now_unix_secs) > CLOCK_SKEW_MAX_SECS || !amz_date.starts_with(date) {
        return Err(AuthError::InvalidSignature(format!(
            "Signature expired or not yet valid: {amz_date} is more than 15 minutes from the server's time, \
             or does not match the credential scope."
        )));
    }

    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let value = header(request.headers, name).ok_or_else(|| {
            AuthError::InvalidSignature(format!("Signed header {name} is missing."))
        })?;
        let folded = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{}:{}\n", name.to_ascii_lowercase(), folded));
    }
    let mut query: Vec<&str> = request.query.split('&').filter(|q| !q.is_empty()).collect();
    query.sort_unstable();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        if request.path.is_empty() {
            "/"
        } else {
            request.path
        },
        query.join("&"),
        canonical_headers,
        signed_headers,
        hex(&Sha256::digest(request.body))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = [
        date.as_bytes(),
        region.as_bytes(),
        service.as_bytes(),
        b"aws4_request",
    ]
    .iter()
    .fold(format!("AWS4{secret}").into_bytes(), |key, part| {
        hmac(&key, part)
    });
    let expected = hex(&hmac(&key, string_to_sign.as_bytes()));
    // Constant-time comparison.
    let differs = expected.len() != signature.len()
        || expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    if differs {
        return Err(AuthError::InvalidSignature(
            "The request signature we calculated does not match the signature you provided.".into(),
        ));
    }
    Ok(())
}

/// Signs a request the way AWS clients do (for tests and tools).
pub fn sign(
    request: &mut Vec<(String, String)>,
    method: &str,
    path: &str,
    body: &[u8],
    key: (&str, &str),
    amz_date: &str,
    region: &str,
) {
    request.push(("x-amz-date".into(), amz_date.into()));
    let mut names: Vec<String> = request
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    let signed_headers = names.join(";");
    let mut canonical_headers = String::new();
    for name in &names {
        let value = header(request, name).unwrap_or_default();
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let canonical_request = format!(
        "{method}\n{path}\n\n{canonical_headers}\n{signed_headers}\n{}",
        hex(&Sha256::digest(body))
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/dynamodb/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let signing = [
        date.as_bytes(),
        region.as_bytes(),
        b"dynamodb".as_slice(),
        b"aws4_request",
    ]
    .iter()
    .fold(format!("AWS4{}", key.1).into_bytes(), |k, part| {
        hmac(&k, part)
    });
    let signature = hex(&hmac(&signing, string_to_sign.as_bytes()));
    request.push((
        "authorization".into(),
        format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}", key.0),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(body: &[u8], key: (&str, &str)) -> Vec<(String, String)> {
        let mut headers = vec![
            ("Host".to_owned(), "localhost:8000".to_owned()),
            (
                "X-Amz-Target".to_owned(),
                "DynamoDB_20120810.ListTables".to_owned(),
            ),
        ];
        sign(
            &mut headers,
            "POST",
            "/",
            body,
            key,
            &amz_date(NOW),
            "us-east-1",
        );
        headers
    }

    /// 2026-01-01T00:00:00Z.
    const NOW: u64 = 1_767_225_600;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn amz_dates_round_trip() {
        assert_eq!(amz_date(NOW), "20260101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z"); // a leap day
        for t in [0, 1, 59, 86_399, 951_868_799, NOW, 4_102_444_800] {
            assert_eq!(parse_amz_date(&amz_date(t)), Some(t), "{t}");
        }
        assert_eq!(parse_amz_date("2026-01-01T00:00:00Z"), None);
        assert_eq!(parse_amz_date("20261301T000000Z"), None);
    }

    #[test]
    fn stale_or_future_requests_are_refused() {
        let secrets = HashMap::from([("AKCAIRN".to_owned(), "s3cret".to_owned())]);
        let mut headers = vec![("Host".to_owned(), "h".to_owned())];
        sign(
            &mut headers,
            "POST",
            "/",
            b"{}",
            ("AKCAIRN", "s3cret"),
            &amz_date(NOW),
            "us-east-1",
        );
        let request = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: b"{}",
        };
        assert_eq!(verify(&request, &secrets, NOW + 14 * 60), Ok(()));
        assert!(matches!(
            verify(&request, &secrets, NOW + 16 * 60),
            Err(AuthError::InvalidSignature(_))
        ));
        assert!(matches!(
            verify(&request, &secrets, NOW - 16 * 60),
            Err(AuthError::InvalidSignature(_))
        ));
    }

    #[test]
    fn a_correct_signature_verifies_and_tampering_does_not() {
        let secrets = HashMap::from([("AKCAIRN".to_owned(), "s3cret".to_owned())]);
        let body = br#"{"Limit":1}"#;
        let headers = signed(body, ("AKCAIRN", "s3cret"));
        let request = |headers: &[(String, String)], body: &[u8]| {
            let request = SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers,
                body,
            };
            verify(&request, &secrets, NOW)
        };
        assert_eq!(request(&headers, body), Ok(()));
        // A changed body, header, or secret fails.
        assert!(matches!(
            request(&headers, br#"{"Limit":2}"#),
            Err(AuthError::InvalidSignature(_))
        ));
        let mut changed = headers.clone();
        changed[1].1 = "DynamoDB_20120810.DeleteTable".into();
        assert!(matches!(
            request(&changed, body),
            Err(AuthError::InvalidSignature(_))
        ));
        let wrong_secret = signed(body, ("AKCAIRN", "guess"));
        assert!(matches!(
            request(&wrong_secret, body),
            Err(AuthError::InvalidSignature(_))
        ));
        // Unknown key, no signature.
        let unknown = signed(body, ("AKOTHER", "s3cret"));
        assert!(matches!(
            request(&unknown, body),
            Err(AuthError::Unrecognized(_))
        ));
        assert!(matches!(
            request(&headers[..2], body),
            Err(AuthError::Unrecognized(_))
        ));
    }
}
