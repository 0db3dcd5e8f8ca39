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
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Appends lowercase hex, without a formatting call (and a String) per
/// byte: a request's signature check hexes three digests.
fn hex_into(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xF)]));
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    hex_into(&mut out, bytes);
    out
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The signing key of a credential scope: four HMACs, the same for every
/// request of a day. Each thread keeps the last one it derived.
fn signing_key(
    access_key: &str,
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
) -> [u8; 32] {
    /// The scope (access key, secret, date, region, service) and its key.
    type Cached = Option<([String; 5], [u8; 32])>;
    thread_local! {
        static LAST: std::cell::RefCell<Cached> = const { std::cell::RefCell::new(None) };
    }
    // The secret is part of the scope: a key whose secret changed is
    // derived afresh.
    let scope = [access_key, secret, date, region, service];
    if let Some(key) = LAST.with_borrow(|last| {
        last.as_ref()
            .filter(|(cached, _)| cached.iter().zip(scope).all(|(a, b)| a == b))
            .map(|(_, key)| *key)
    }) {
        return key;
    }
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region.as_bytes(), service.as_bytes(), b"aws4_request"] {
        key = hmac(&key, part);
    }
    LAST.set(Some((scope.map(str::to_owned), key)));
    key
}

fn header<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
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

/// SigV4's string to sign for `request`: the canonical request (method,
/// path, sorted query, the signed headers lowercased with their values'
/// whitespace folded, the body's SHA-256), hashed, after the date and the
/// credential scope. Built in place, with no formatting calls.
fn string_to_sign(
    request: &SignedRequest<'_>,
    signed_headers: &str,
    amz_date: &str,
    [date, region, service]: [&str; 3],
) -> Result<String, AuthError> {
    let mut canonical = String::with_capacity(256 + request.headers.len() * 64);
    canonical.push_str(request.method);
    canonical.push('\n');
    canonical.push_str(if request.path.is_empty() {
        "/"
    } else {
        request.path
    });
    canonical.push('\n');
    if !request.query.is_empty() {
        let mut query: Vec<&str> = request.query.split('&').filter(|q| !q.is_empty()).collect();
        query.sort_unstable();
        for (i, part) in query.iter().enumerate() {
            if i > 0 {
                canonical.push('&');
            }
            canonical.push_str(part);
        }
    }
    canonical.push('\n');
    for name in signed_headers.split(';') {
        let value = header(request.headers, name).ok_or_else(|| {
            AuthError::InvalidSignature(format!("Signed header {name} is missing."))
        })?;
        canonical.extend(name.chars().map(|c| c.to_ascii_lowercase()));
        canonical.push(':');
        for (i, word) in value.split_whitespace().enumerate() {
            if i > 0 {
                canonical.push(' ');
            }
            canonical.push_str(word);
        }
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(signed_headers);
    canonical.push('\n');
    hex_into(&mut canonical, &Sha256::digest(request.body));
    let mut string_to_sign = String::with_capacity(160);
    string_to_sign.push_str("AWS4-HMAC-SHA256\n");
    string_to_sign.push_str(amz_date);
    string_to_sign.push('\n');
    for part in [date, "/", region, "/", service, "/aws4_request\n"] {
        string_to_sign.push_str(part);
    }
    hex_into(&mut string_to_sign, &Sha256::digest(canonical.as_bytes()));
    Ok(string_to_sign)
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

    let string_to_sign =
        string_to_sign(request, signed_headers, amz_date, [date, region, service])?;
    let key = signing_key(access_key, secret, date, region, service);
    let mut expected = String::with_capacity(64);
    hex_into(&mut expected, &hmac(&key, string_to_sign.as_bytes()));
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
    let date = &amz_date[..8];
    let pairs: Vec<(&str, &str)> = request
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let signed = SignedRequest {
        method,
        path,
        query: "",
        headers: &pairs,
        body,
    };
    let string_to_sign = string_to_sign(
        &signed,
        &signed_headers,
        amz_date,
        [date, region, "dynamodb"],
    )
    .expect("every signed header is present");
    let signing = signing_key(key.0, key.1, date, region, "dynamodb");
    let signature = hex(&hmac(&signing, string_to_sign.as_bytes()));
    request.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{date}/{region}/dynamodb/aws4_request, SignedHeaders={signed_headers}, Signature={signature}",
            key.0
        ),
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
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let request = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &pairs,
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
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let request = SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers: &pairs,
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
