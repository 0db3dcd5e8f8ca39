//! The QUIC transport on loopback, inside one glommio executor.

#![allow(clippy::unwrap_used)] // Test helpers: a panic is the failure report.

use std::rc::Rc;
use std::time::Duration;

use cairn_common::quic::{
    Connection, Endpoint, Identity, MESSAGE_BYTES_MAX, TransportError, frame,
};
use glommio::{LocalExecutorBuilder, Placement};

const TIMEOUT: Duration = Duration::from_secs(10);

fn run(body: impl AsyncFnOnce() + Send + 'static) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move { body().await })
        .unwrap()
        .join()
        .unwrap();
}

/// Answers each request with "echo:" + body, or "bad:" + the error.
async fn serve(connection: Connection) {
    while let Ok(request) = connection.next_request().await {
        let answer = match request.body {
            Ok(body) => [b"echo:".as_slice(), &body].concat(),
            Err(error) => format!("bad:{error}").into_bytes(),
        };
        connection.respond(request.stream, &answer).unwrap();
    }
}

fn start_server(identity: &Identity) -> std::net::SocketAddr {
    let server = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        Some(identity.server_config().unwrap()),
        None,
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    glommio::spawn_local(async move {
        while let Ok(connection) = server.accept().await {
            glommio::spawn_local(serve(connection)).detach();
        }
    })
    .detach();
    addr
}

#[test]
fn concurrent_requests_round_trip() {
    run(async || {
        let identity = Identity::self_signed(&["localhost"]).unwrap();
        let addr = start_server(&identity);
        let client = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Some(identity.client_config().unwrap()),
        )
        .unwrap();
        let connection = Rc::new(client.connect(addr, "localhost").await.unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let connection = connection.clone();
                glommio::spawn_local(async move {
                    for i in 0..50 {
                        let body = format!("task {task} request {i}");
                        let answer = connection.request(body.as_bytes(), TIMEOUT).await.unwrap();
                        assert_eq!(answer, format!("echo:{body}").into_bytes());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        // A message larger than the initial flow-control windows.
        let large = vec![7u8; 1 << 20];
        let answer = connection.request(&large, TIMEOUT).await.unwrap();
        assert_eq!(answer.len(), large.len() + 5);
    });
}

#[test]
fn malformed_and_oversize_messages_get_typed_errors_and_the_server_keeps_serving() {
    run(async || {
        let identity = Identity::self_signed(&["localhost"]).unwrap();
        let addr = start_server(&identity);
        let client = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Some(identity.client_config().unwrap()),
        )
        .unwrap();
        let connection = client.connect(addr, "localhost").await.unwrap();
        let mut damaged = frame(b"payload").unwrap();
        damaged[10] ^= 0xFF;
        let answer = connection.request_raw(damaged, TIMEOUT).await.unwrap();
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            "bad:malformed frame: checksum mismatch"
        );
        let answer = connection
            .request_raw(b"xy".to_vec(), TIMEOUT)
            .await
            .unwrap();
        assert!(
            String::from_utf8(answer)
                .unwrap()
                .starts_with("bad:malformed frame")
        );
        // Refused before sending.
        let oversize = vec![0u8; MESSAGE_BYTES_MAX + 1];
        assert!(matches!(
            connection.request(&oversize, TIMEOUT).await,
            Err(TransportError::MessageTooLarge { .. })
        ));
        // Still serving, on the same connection.
        assert_eq!(
            connection.request(b"ok", TIMEOUT).await.unwrap(),
            b"echo:ok"
        );
    });
}

#[test]
fn a_request_without_an_answer_times_out() {
    run(async || {
        let identity = Identity::self_signed(&["localhost"]).unwrap();
        // A server that accepts connections but never answers.
        let server = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            Some(identity.server_config().unwrap()),
            None,
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        glommio::spawn_local(async move {
            let mut held = Vec::new();
            while let Ok(connection) = server.accept().await {
                held.push(connection);
            }
        })
        .detach();
        let client = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Some(identity.client_config().unwrap()),
        )
        .unwrap();
        let connection = client.connect(addr, "localhost").await.unwrap();
        let result = connection
            .request(b"anyone?", Duration::from_millis(200))
            .await;
        assert_eq!(
            result,
            Err(TransportError::TimedOut(Duration::from_millis(200)))
        );
    });
}
