//! A minimal HTTP/1.1 responder for Prometheus scrapes (`GET /metrics`),
//! shared by routers and nodes: one request per connection, a bounded
//! request head, the exposition text made by the caller ([`exposition`]).

use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// The text exposition (OpenMetrics) of `registry`.
pub fn exposition(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        text.clear();
        text.push_str("# encoding the metrics failed\n");
    }
    text
}

/// Most bytes of a scrape's request head.
const HEAD_BYTES_MAX: usize = 8192;

/// Serves `GET /metrics` on one connection, then closes it.
pub async fn serve_scrape(mut stream: glommio::net::TcpStream, body: impl FnOnce() -> String) {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut slots);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break Some((request.method == Some("GET")) && request.path == Some("/metrics"));
            }
            Ok(httparse::Status::Partial) if head.len() < HEAD_BYTES_MAX => {}
            _ => break None,
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    };
    let (status, content_type, text) = match complete {
        Some(true) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body(),
        ),
        Some(false) => ("404 Not Found", "text/plain", "GET /metrics\n".to_owned()),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}
