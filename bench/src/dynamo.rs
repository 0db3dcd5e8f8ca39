//! A minimal DynamoDB-protocol client for `cairn bench --protocol dynamodb`:
//! HTTP/1.1 keep-alive over a glommio TCP stream, requests signed with
//! SigV4 as AWS clients sign them. One request at a time per connection,
//! as HTTP/1.1 without pipelining allows.

use std::net::SocketAddr;

use cairn_router::dynamodb::sigv4;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde_json::Value as Json;

#[derive(Debug)]
pub struct DynamoConn {
    stream: TcpStream,
    host: String,
    key: (String, String),
    buffer: Vec<u8>,
    /// Read scratch space, on the heap so the call's future stays small.
    chunk: Vec<u8>,
}

/// A failed call: whether the SDKs would retry it, and why.
#[derive(Debug, Clone)]
pub struct CallError {
    pub retryable: bool,
    /// A ProvisionedThroughputExceededException.
    pub throttled: bool,
    pub message: String,
}

impl DynamoConn {
    pub async fn connect(addr: SocketAddr, key: (String, String)) -> std::io::Result<DynamoConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(DynamoConn {
            stream,
            host: addr.to_string(),
            key,
            buffer: Vec::with_capacity(64 * 1024),
            chunk: vec![0; 16 * 1024],
        })
    }

    /// Sends `operation` with `body`; returns the JSON answer of a 200.
    pub async fn call(
        &mut self,
        operation: &str,
        body: &impl serde::Serialize,
    ) -> Result<Json, CallError> {
        let io = |e: std::io::Error| CallError {
            throttled: false,
            retryable: true,
            message: e.to_string(),
        };
        let body = serde_json::to_vec(body).expect("requests serialize");
        let mut headers = vec![
            ("host".to_owned(), self.host.clone()),
            (
                "x-amz-target".to_owned(),
                format!("DynamoDB_20120810.{operation}"),
            ),
        ];
        let now = sigv4::amz_date(cairn_router::dynamodb::unix_now());
        sigv4::sign(
            &mut headers,
            "POST",
            "/",
            &body,
            (&self.key.0, &self.key.1),
            &now,
            "us-east-1",
        );
        let mut request = String::from("POST / HTTP/1.1\r\n");
        for (name, value) in &headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!(
            "content-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n",
            body.len()
        ));
        // One write per request: two would wait on each other's ACK.
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        self.stream.write_all(&bytes).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;

        let (status, header_len, content_length) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut slots);
            match response.parse(&self.buffer) {
                Ok(httparse::Status::Complete(len)) => {
                    let content_length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0);
                    break (response.code.unwrap_or(0), len, content_length);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(CallError {
                        throttled: false,
                        retryable: false,
                        message: e.to_string(),
                    });
                }
            }
            let n = self.stream.read(&mut self.chunk).await.map_err(io)?;
            if n == 0 {
                return Err(CallError {
                    throttled: false,
                    retryable: true,
                    message: "connection closed".into(),
                });
            }
            self.buffer.extend_from_slice(&self.chunk[..n]);
        };
        while self.buffer.len() < header_len + content_length {
            let n = self.stream.read(&mut self.chunk).await.map_err(io)?;
            if n == 0 {
                return Err(CallError {
                    throttled: false,
                    retryable: true,
                    message: "connection closed".into(),
                });
            }
            self.buffer.extend_from_slice(&self.chunk[..n]);
        }
        let json: Result<Json, _> =
            serde_json::from_slice(&self.buffer[header_len..header_len + content_length]);
        self.buffer.drain(..header_len + content_length);
        let json = json.map_err(|e| CallError {
            throttled: false,
            retryable: false,
            message: e.to_string(),
        })?;
        if status != 200 {
            let kind = json
                .get("__type")
                .and_then(Json::as_str)
                .unwrap_or_default();
            let throttled = kind.ends_with("ProvisionedThroughputExceededException");
            let retryable = status >= 500 || throttled;
            return Err(CallError {
                throttled,
                retryable,
                message: format!("{status} {kind}"),
            });
        }
        Ok(json)
    }
}
