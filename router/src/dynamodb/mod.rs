//! The DynamoDB-compatible front door: HTTP/1.1 with DynamoDB's JSON
//! protocol (`X-Amz-Target: DynamoDB_20120810.<Operation>`), requests
//! checked with AWS Signature Version 4, mapped onto the router's native
//! requests (docs/dynamodb-api.md says what is supported).
//!
//! Every router core accepts on the same TCP port (SO_REUSEPORT). Headers
//! are bounded to 64 KiB and bodies to 16 MiB; a bigger request is refused
//! and the connection closed.

pub mod api;
pub mod expr;
pub mod json;
pub mod legacy;
pub mod sigv4;

use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::State;
use api::{ApiError, Reply};
use json::Body;

const HEADER_BYTES_MAX: usize = 64 * 1024;
const BODY_BYTES_MAX: usize = 16 << 20;
const TARGET_PREFIX: &str = "DynamoDB_20120810.";

/// Who may call the endpoint.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Access key id → secret key.
    pub keys: HashMap<String, String>,
    /// Refuse unsigned or wrongly signed requests (off only for local
    /// experiments).
    pub require_signature: bool,
}

/// Accepts HTTP connections and serves them on this core.
pub(crate) async fn serve(state: Rc<State>, listener: TcpListener, access: Rc<Access>) {
    while let Ok(stream) = listener.accept().await {
        // Answers are small and go out whole: no Nagle delay.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY");
        }
        glommio::spawn_local(connection(state.clone(), stream, access.clone())).detach();
    }
}

/// A request's head: its text in one string, and where each part lies in
/// it (one allocation for all headers, not two per header).
#[derive(Clone)]
struct Parsed {
    header_len: usize,
    text: String,
    method: Range<usize>,
    path: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    content_length: usize,
}

impl Parsed {
    fn method(&self) -> &str {
        &self.text[self.method.clone()]
    }

    fn path(&self) -> &str {
        match &self.text[self.path.clone()] {
            "" => "/",
            path => path,
        }
    }

    /// The first header of this name, in any case.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| self.text[n.clone()].eq_ignore_ascii_case(name))
            .map(|(_, v)| &self.text[v.clone()])
    }

    fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.text[n.clone()], &self.text[v.clone()]))
            .collect()
    }
}

enum ParseOutcome {
    Complete(Parsed),
    Partial,
    Bad(&'static str),
}

fn parse(buffer: &[u8]) -> ParseOutcome {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut slots);
    match request.parse(buffer) {
        Ok(httparse::Status::Complete(header_len)) => {
            // httparse's parts are slices of the head: copy the head once
            // and keep where each part lies in it.
            let Ok(text) = std::str::from_utf8(&buffer[..header_len]) else {
                return ParseOutcome::Bad("request headers are not UTF-8");
            };
            let base = buffer.as_ptr() as usize;
            let at = |part: &[u8]| {
                let start = part.as_ptr() as usize - base;
                start..start + part.len()
            };
            let method = request.method.map_or(0..0, |m| at(m.as_bytes()));
            let path = request.path.map_or(0..0, |p| at(p.as_bytes()));
            let headers: Vec<(Range<usize>, Range<usize>)> = request
                .headers
                .iter()
                .map(|h| (at(h.name.as_bytes()), at(h.value)))
                .collect();
            let mut parsed = Parsed {
                header_len,
                text: text.to_owned(),
                method,
                path,
                headers,
                content_length: 0,
            };
            parsed.content_length = parsed
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            ParseOutcome::Complete(parsed)
        }
        Ok(httparse::Status::Partial) => ParseOutcome::Partial,
        Err(_) => ParseOutcome::Bad("malformed HTTP request"),
    }
}

async fn connection(state: Rc<State>, mut stream: TcpStream, access: Rc<Access>) {
    let mut buffer: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let parsed = loop {
            match parse(&buffer) {
                ParseOutcome::Complete(parsed) => break parsed,
                ParseOutcome::Bad(reason) => {
                    let _ = respond(
                        &mut stream,
                        ApiError::new(
                            400,
                            "com.amazon.coral.service#SerializationException",
                            reason,
                        )
                        .into_response(),
                        true,
                    )
                    .await;
                    return;
                }
                ParseOutcome::Partial if buffer.len() > HEADER_BYTES_MAX => {
                    let error = ApiError::new(
                        400,
                        "com.amazon.coral.service#SerializationException",
                        "request headers too large",
                    );
                    let _ = respond(&mut stream, error.into_response(), true).await;
                    return;
                }
                ParseOutcome::Partial => match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                },
            }
        };
        if parsed.content_length > BODY_BYTES_MAX {
            let error = ApiError::new(
                413,
                "com.amazonaws.dynamodb.v20120810#ValidationException",
                "Request size exceeds 16 MB",
            );
            let _ = respond(&mut stream, error.into_response(), true).await;
            return;
        }
        let end = parsed.header_len + parsed.content_length;
        while buffer.len() < end {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let close = parsed
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let response = match handle(&state, &access, &parsed, &buffer[parsed.header_len..end]).await
        {
            Ok(reply) => (200, reply),
            Err(error) => error.into_response(),
        };
        buffer.drain(..end);
        if respond(&mut stream, response, close).await.is_err() || close {
            return;
        }
    }
}

/// Bodies above this size are verified and parsed on the executor's
/// blocking thread, so a large request does not hold the core (hashing
/// and parsing a 16 MB body takes tens of milliseconds) while the core's
/// other requests wait.
const OFFLOAD_BYTES_MIN: usize = 64 * 1024;

async fn handle(
    state: &State,
    access: &Access,
    request: &Parsed,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let (operation, body) = if body.len() >= OFFLOAD_BYTES_MIN {
        let (access, request, body) = (access.clone(), request.clone(), body.to_vec());
        glommio::executor()
            .spawn_blocking(move || prepare(&access, &request, &body))
            .await?
    } else {
        prepare(access, request, body)?
    };
    api::dispatch(state, &operation, body).await
}

/// The work proportional to the body: the signature check (which hashes
/// it) and JSON parsing. Returns the operation and the parsed body.
fn prepare(access: &Access, request: &Parsed, body: &[u8]) -> Result<(String, Body), ApiError> {
    if access.require_signature {
        let full_path = request.path();
        let (path, query) = full_path.split_once('?').unwrap_or((full_path, ""));
        let headers = request.header_pairs();
        let signed = sigv4::SignedRequest {
            method: request.method(),
            path,
            query,
            headers: &headers,
            body,
        };
        sigv4::verify(&signed, &access.keys, unix_now()).map_err(|error| match error {
            sigv4::AuthError::Unrecognized(m) => ApiError::new(
                400,
                "com.amazon.coral.service#UnrecognizedClientException",
                m,
            ),
            sigv4::AuthError::InvalidSignature(m) => {
                ApiError::new(400, "com.amazon.coral.service#InvalidSignatureException", m)
            }
        })?;
    }
    let target = request.header("x-amz-target").unwrap_or_default();
    let Some(operation) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(ApiError::new(
            400,
            "com.amazon.coral.service#UnknownOperationException",
            format!("Unknown target {target:?}"),
        ));
    };
    let body = Body::parse(body).map_err(|e| {
        ApiError::new(
            400,
            "com.amazon.coral.service#SerializationException",
            e.to_string(),
        )
    })?;
    Ok((operation.to_owned(), body))
}

/// Wall-clock seconds: signatures carry wall-clock dates. This is the IO
/// shell; sigv4::verify itself takes the time as an argument.
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ApiError {
    fn into_response(self) -> (u16, Reply) {
        (self.status, Reply::Json(self.body()))
    }
}

async fn respond(
    stream: &mut TcpStream,
    (status, reply): (u16, Reply),
    close: bool,
) -> std::io::Result<()> {
    let body = reply.into_bytes();
    let status_line: &[u8] = match status {
        200 => b"HTTP/1.1 200 OK\r\n",
        400 => b"HTTP/1.1 400 Bad Request\r\n",
        413 => b"HTTP/1.1 413 Payload Too Large\r\n",
        _ => b"HTTP/1.1 500 Internal Server Error\r\n",
    };
    // One write per response: two would wait on each other's ACK. The
    // head is assembled from fixed parts, without a formatting call.
    let mut response = Vec::with_capacity(160 + body.len());
    response.extend_from_slice(status_line);
    response.extend_from_slice(b"Content-Type: application/x-amz-json-1.0\r\nContent-Length: ");
    push_decimal(&mut response, body.len());
    response.extend_from_slice(b"\r\nx-amzn-RequestId: cairn\r\n");
    if close {
        response.extend_from_slice(b"Connection: close\r\n");
    }
    response.extend_from_slice(b"\r\n");
    response.extend_from_slice(&body);
    stream.write_all(&response).await?;
    stream.flush().await
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_parsed_into_ranges_of_one_copy() {
        let request = b"POST /?a=1 HTTP/1.1\r\nHost: x\r\nX-Amz-Target: DynamoDB_20120810.GetItem\r\nContent-Length: 12\r\n\r\n{\"Key\":null}";
        let ParseOutcome::Complete(parsed) = parse(request) else {
            panic!("a whole head parses");
        };
        assert_eq!(parsed.method(), "POST");
        assert_eq!(parsed.path(), "/?a=1");
        assert_eq!(parsed.header("host"), Some("x"));
        assert_eq!(
            parsed.header("x-amz-target"),
            Some("DynamoDB_20120810.GetItem")
        );
        assert_eq!(parsed.content_length, 12);
        assert_eq!(&request[parsed.header_len..], b"{\"Key\":null}");
        assert_eq!(
            parsed.header_pairs(),
            vec![
                ("Host", "x"),
                ("X-Amz-Target", "DynamoDB_20120810.GetItem"),
                ("Content-Length", "12")
            ]
        );
        assert!(matches!(parse(&request[..30]), ParseOutcome::Partial));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n"),
            ParseOutcome::Bad(_)
        ));
    }

    #[test]
    fn decimals_are_written_without_formatting() {
        for n in [0, 7, 10, 99, 1234, 16 << 20, usize::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }
}
