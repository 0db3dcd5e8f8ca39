//! QUIC request/response transport for glommio executors, built on the
//! sans-IO `quinn-proto` (quinn's own runtime cannot host glommio's `!Send`
//! sockets and timers; quinn issue #1681).
//!
//! One [`Endpoint`] per core owns one UDP socket and two local tasks:
//! - the *receiver* loops on `recv_from` and queues datagrams. It is never
//!   cancelled, so no datagram is lost to a dropped read;
//! - the *driver* feeds queued datagrams, timers and connection events to
//!   quinn-proto, copies readable stream data into per-stream buffers, and
//!   sends what quinn-proto wants sent. It wakes on a new datagram, on an
//!   application write, or at the earliest connection timer.
//!
//! Above that sits a small RPC shape. A request is one bidirectional stream:
//! the client writes a framed message and finishes, the server answers with
//! one framed message and finishes. A frame is `crc32c ‖ length ‖ body`
//! (docs/wire-format.md), and bodies are bounded by [`MESSAGE_BYTES_MAX`].
//! Streams per connection are bounded by the QUIC stream limit, which gives
//! the bound on requests in flight.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use event_listener::Event;
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, ServerConfig, StreamId, VarInt,
};

/// Largest message body a frame may carry.
pub const MESSAGE_BYTES_MAX: usize = 2 << 20;
/// Requests a connection may have in flight (QUIC bidirectional streams).
pub const STREAMS_IN_FLIGHT_MAX: u32 = 1024;
const FRAME_HEADER_BYTES: usize = 8;
const DATAGRAM_BYTES_MAX: usize = 64 * 1024;

/// Transport errors. `Overloaded` and `TimedOut` are retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("connecting to {addr} failed: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("too many requests in flight on this connection")]
    Overloaded,
    #[error("request timed out after {0:?}")]
    TimedOut(Duration),
    #[error("message of {size_bytes} bytes exceeds the {MESSAGE_BYTES_MAX}-byte limit")]
    MessageTooLarge { size_bytes: usize },
    #[error("malformed frame: {0}")]
    BadFrame(&'static str),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("socket error: {0}")]
    Io(String),
}

impl TransportError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TransportError::Overloaded | TransportError::TimedOut(_)
        )
    }
}

/// Frames a message body: `crc32c(length ‖ body) ‖ length ‖ body`.
pub fn frame(body: &[u8]) -> Result<Vec<u8>, TransportError> {
    if body.len() > MESSAGE_BYTES_MAX {
        return Err(TransportError::MessageTooLarge {
            size_bytes: body.len(),
        });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks a frame and returns its body.
pub fn unframe(bytes: &[u8]) -> Result<&[u8], TransportError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(TransportError::BadFrame("shorter than a frame header"));
    }
    let length = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    if FRAME_HEADER_BYTES + length != bytes.len() {
        return Err(TransportError::BadFrame("length does not match the stream"));
    }
    let crc = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&bytes[4..]) {
        return Err(TransportError::BadFrame("checksum mismatch"));
    }
    Ok(&bytes[FRAME_HEADER_BYTES..])
}

/// Self-signed TLS material for a local cluster (`cairn up`).
#[derive(Debug, Clone)]
pub struct Identity {
    pub certificate_der: Vec<u8>,
    pub private_key_der: Vec<u8>,
}

impl Identity {
    /// A fresh self-signed certificate for `names` (e.g. "localhost").
    pub fn self_signed(names: &[&str]) -> Result<Identity, String> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        Ok(Identity {
            certificate_der: certified.cert.der().to_vec(),
            private_key_der: certified.signing_key.serialize_der(),
        })
    }

    /// A fresh self-signed identity, also as PEM text (certificate, key)
    /// for writing to files.
    pub fn self_signed_pem(names: &[&str]) -> Result<(Identity, String, String), String> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        let identity = Identity {
            certificate_der: certified.cert.der().to_vec(),
            private_key_der: certified.signing_key.serialize_der(),
        };
        Ok((
            identity,
            certified.cert.pem(),
            certified.signing_key.serialize_pem(),
        ))
    }

    /// An identity that only trusts the PEM certificate at `path`: what a
    /// client needs to connect to a router.
    pub fn trusting_pem_file(path: &std::path::Path) -> Result<Identity, String> {
        use rustls::pki_types::pem::PemObject;
        let cert = rustls::pki_types::CertificateDer::from_pem_file(path)
            .map_err(|e| format!("certificate {}: {e}", path.display()))?;
        Ok(Identity {
            certificate_der: cert.to_vec(),
            private_key_der: Vec::new(),
        })
    }

    /// Loads a PEM certificate and a PEM (PKCS#8) private key.
    pub fn from_pem_files(
        certificate: &std::path::Path,
        private_key: &std::path::Path,
    ) -> Result<Identity, String> {
        use rustls::pki_types::pem::PemObject;
        let cert = rustls::pki_types::CertificateDer::from_pem_file(certificate)
            .map_err(|e| format!("certificate {}: {e}", certificate.display()))?;
        let key =
            rustls::pki_types::PrivatePkcs8KeyDer::from_pem_file(private_key).map_err(|e| {
                format!(
                    "private key {} (PKCS#8 PEM expected): {e}",
                    private_key.display()
                )
            })?;
        Ok(Identity {
            certificate_der: cert.to_vec(),
            private_key_der: key.secret_pkcs8_der().to_vec(),
        })
    }

    pub fn server_config(&self) -> Result<ServerConfig, String> {
        let chain = vec![rustls::pki_types::CertificateDer::from(
            self.certificate_der.clone(),
        )];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.private_key_der.clone().into());
        let mut config = ServerConfig::with_single_cert(chain, key).map_err(|e| e.to_string())?;
        config.transport_config(transport_config());
        Ok(config)
    }

    /// A client config that trusts this identity's certificate.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.certificate_der.clone(),
            ))
            .map_err(|e| e.to_string())?;
        let mut config =
            ClientConfig::with_root_certificates(Arc::new(roots)).map_err(|e| e.to_string())?;
        config.transport_config(transport_config());
        Ok(config)
    }
}

fn transport_config() -> Arc<quinn_proto::TransportConfig> {
    let mut transport = quinn_proto::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_IN_FLIGHT_MAX));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    Arc::new(transport)
}

/// Bytes received on one stream so far.
#[derive(Debug, Default)]
struct StreamBuffer {
    data: Vec<u8>,
    finished: bool,
    failed: Option<String>,
}

/// Bytes waiting for flow-control credit, then a finish.
#[derive(Debug)]
struct PendingWrite {
    data: Vec<u8>,
    written: usize,
}

#[derive(Debug)]
struct Conn {
    quic: quinn_proto::Connection,
    connected: bool,
    lost: Option<String>,
    /// Streams the peer opened, in order (server side: requests).
    opened_by_peer: VecDeque<StreamId>,
    buffers: HashMap<StreamId, StreamBuffer>,
    writes: HashMap<StreamId, PendingWrite>,
}

#[derive(Debug)]
struct State {
    endpoint: quinn_proto::Endpoint,
    client_config: Option<ClientConfig>,
    connections: HashMap<ConnectionHandle, Conn>,
    accepted: VecDeque<ConnectionHandle>,
    inbox: VecDeque<(SocketAddr, BytesMut)>,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    socket_error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    socket: glommio::net::UdpSocket,
    state: RefCell<State>,
    /// Something for the driver to do.
    wake_driver: Event,
    /// The driver made progress; waiters re-check their condition.
    progressed: Event,
}

/// A QUIC endpoint on one core. Must be created inside a glommio executor.
#[derive(Debug, Clone)]
pub struct Endpoint {
    shared: Rc<Shared>,
}

impl Endpoint {
    /// Binds `addr`; `server` makes it accept connections, `client` lets it
    /// open them.
    pub fn bind(
        addr: SocketAddr,
        server: Option<ServerConfig>,
        client: Option<ClientConfig>,
    ) -> Result<Endpoint, TransportError> {
        // glommio's own bind sets SO_REUSEPORT, which would let a second
        // process on the same port silently take half of our datagrams.
        // Bind without it, so an address in use is an error.
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|e| TransportError::Io(format!("{addr}: {e}")))?;
        // SAFETY: the descriptor comes from a socket we own and give up here.
        let socket = unsafe { glommio::net::UdpSocket::from_raw_fd(socket.into_raw_fd()) };
        Self::with_socket(socket, server, client)
    }

    /// Binds `addr` with SO_REUSEPORT, so that several executors of one
    /// process can each own a socket on the same port; the kernel keeps each
    /// peer (4-tuple) on one socket, so a connection stays on one core.
    pub fn bind_shared(
        addr: SocketAddr,
        server: Option<ServerConfig>,
        client: Option<ClientConfig>,
    ) -> Result<Endpoint, TransportError> {
        let socket = glommio::net::UdpSocket::bind(addr)
            .map_err(|e| TransportError::Io(format!("{addr}: {e}")))?;
        Self::with_socket(socket, server, client)
    }

    fn with_socket(
        socket: glommio::net::UdpSocket,
        server: Option<ServerConfig>,
        client: Option<ClientConfig>,
    ) -> Result<Endpoint, TransportError> {
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            server.map(Arc::new),
            true,
            None,
        );
        let shared = Rc::new(Shared {
            socket,
            state: RefCell::new(State {
                endpoint,
                client_config: client,
                connections: HashMap::new(),
                accepted: VecDeque::new(),
                inbox: VecDeque::new(),
                outbox: Vec::new(),
                socket_error: None,
            }),
            wake_driver: Event::new(),
            progressed: Event::new(),
        });
        glommio::spawn_local(receive(Rc::downgrade(&shared))).detach();
        glommio::spawn_local(drive(Rc::downgrade(&shared))).detach();
        Ok(Endpoint { shared })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.shared
            .socket
            .local_addr()
            .map_err(|e| TransportError::Io(e.to_string()))
    }

    /// Opens a connection and waits for its handshake.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, TransportError> {
        let handle = {
            let mut state = self.shared.state.borrow_mut();
            let config = state
                .client_config
                .clone()
                .ok_or_else(|| TransportError::Connect {
                    addr,
                    reason: "this endpoint has no client configuration".into(),
                })?;
            let (handle, quic) = state
                .endpoint
                .connect(Instant::now(), config, addr, server_name)
                .map_err(|e| TransportError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
            state.connections.insert(handle, Conn::new(quic));
            handle
        };
        self.shared.wake_driver.notify(1);
        let connection = Connection {
            shared: self.shared.clone(),
            handle,
        };
        connection
            .wait(|conn| match (&conn.lost, conn.connected) {
                (Some(reason), _) => Some(Err(TransportError::Connect {
                    addr,
                    reason: reason.clone(),
                })),
                (None, true) => Some(Ok(())),
                (None, false) => None,
            })
            .await?;
        Ok(connection)
    }

    /// Waits for the next incoming connection.
    pub async fn accept(&self) -> Result<Connection, TransportError> {
        loop {
            let listener = self.shared.progressed.listen();
            {
                let mut state = self.shared.state.borrow_mut();
                if let Some(error) = &state.socket_error {
                    return Err(TransportError::Io(error.clone()));
                }
                if let Some(handle) = state.accepted.pop_front() {
                    return Ok(Connection {
                        shared: self.shared.clone(),
                        handle,
                    });
                }
            }
            listener.await;
        }
    }
}

impl Conn {
    fn new(quic: quinn_proto::Connection) -> Conn {
        Conn {
            quic,
            connected: false,
            lost: None,
            opened_by_peer: VecDeque::new(),
            buffers: HashMap::new(),
            writes: HashMap::new(),
        }
    }

    /// Copies everything readable on `id` into its buffer.
    fn read_stream(&mut self, id: StreamId) {
        let buffer = self.buffers.entry(id).or_default();
        if buffer.finished || buffer.failed.is_some() {
            // quinn-proto frees a stream once its end is read; a late
            // Readable event must not turn a complete message into an error.
            return;
        }
        let mut stream = self.quic.recv_stream(id);
        let mut chunks = match stream.read(true) {
            Ok(chunks) => chunks,
            Err(error) => {
                buffer.failed.get_or_insert_with(|| error.to_string());
                return;
            }
        };
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    if buffer.data.len() + chunk.bytes.len()
                        > MESSAGE_BYTES_MAX + FRAME_HEADER_BYTES
                    {
                        buffer.failed = Some("message exceeds the size limit".into());
                        break;
                    }
                    buffer.data.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => {
                    buffer.finished = true;
                    break;
                }
                Err(quinn_proto::ReadError::Blocked) => break,
                Err(error) => {
                    buffer.failed = Some(error.to_string());
                    break;
                }
            }
        }
        let _ = chunks.finalize();
    }

    /// Writes as much pending data as flow control allows; finishes
    /// streams whose data is all written.
    fn flush_writes(&mut self) {
        let mut done = Vec::new();
        for (id, pending) in &mut self.writes {
            let mut stream = self.quic.send_stream(*id);
            while pending.written < pending.data.len() {
                match stream.write(&pending.data[pending.written..]) {
                    Ok(0) | Err(quinn_proto::WriteError::Blocked) => break,
                    Ok(n) => pending.written += n,
                    Err(_) => {
                        pending.written = pending.data.len();
                        break;
                    }
                }
            }
            if pending.written == pending.data.len() {
                let _ = stream.finish();
                done.push(*id);
            }
        }
        for id in done {
            self.writes.remove(&id);
        }
    }
}

/// One connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Rc<Shared>,
    handle: ConnectionHandle,
}

/// A request received by a server, to be answered with [`Connection::respond`].
#[derive(Debug)]
pub struct Request {
    pub stream: StreamId,
    /// The body, or why the frame was bad (the stream can still be answered).
    pub body: Result<Vec<u8>, TransportError>,
}

impl Connection {
    /// Waits until `check` (run under the state borrow) returns `Some`.
    async fn wait<T>(
        &self,
        mut check: impl FnMut(&mut Conn) -> Option<Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        loop {
            let listener = self.shared.progressed.listen();
            {
                let mut state = self.shared.state.borrow_mut();
                let Some(conn) = state.connections.get_mut(&self.handle) else {
                    return Err(TransportError::ConnectionLost("connection closed".into()));
                };
                if let Some(result) = check(conn) {
                    return result;
                }
                if let Some(reason) = &conn.lost {
                    return Err(TransportError::ConnectionLost(reason.clone()));
                }
            }
            listener.await;
        }
    }

    fn send_framed(&self, stream: StreamId, framed: Vec<u8>) -> Result<(), TransportError> {
        let mut state = self.shared.state.borrow_mut();
        let conn = state
            .connections
            .get_mut(&self.handle)
            .ok_or_else(|| TransportError::ConnectionLost("connection closed".into()))?;
        conn.writes.insert(
            stream,
            PendingWrite {
                data: framed,
                written: 0,
            },
        );
        conn.flush_writes();
        drop(state);
        self.shared.wake_driver.notify(1);
        Ok(())
    }

    /// Sends a request and waits for its response, for at most `timeout`.
    pub async fn request(&self, body: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
        self.request_raw(frame(body)?, timeout).await
    }

    /// Sends `bytes` as they are (no framing) and returns the peer's framed
    /// answer unframed: for tests of malformed input and fuzzing.
    pub async fn request_raw(
        &self,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let stream = {
            let mut state = self.shared.state.borrow_mut();
            let conn = state
                .connections
                .get_mut(&self.handle)
                .ok_or_else(|| TransportError::ConnectionLost("connection closed".into()))?;
            if let Some(reason) = &conn.lost {
                return Err(TransportError::ConnectionLost(reason.clone()));
            }
            let stream = conn
                .quic
                .streams()
                .open(Dir::Bi)
                .ok_or(TransportError::Overloaded)?;
            conn.buffers.insert(stream, StreamBuffer::default());
            stream
        };
        self.send_framed(stream, bytes)?;
        let response = self.wait(|conn| {
            let buffer = conn.buffers.get(&stream)?;
            if let Some(reason) = &buffer.failed {
                return Some(Err(TransportError::Stream(reason.clone())));
            }
            if !buffer.finished {
                return None;
            }
            conn.buffers.remove(&stream).map(|b| Ok(b.data))
        });
        let timer = async {
            glommio::timer::sleep(timeout).await;
            Err(TransportError::TimedOut(timeout))
        };
        let framed = futures_lite::future::or(response, timer).await;
        if framed.is_err() {
            // Forget the stream's state; late data is dropped on arrival.
            if let Some(conn) = self
                .shared
                .state
                .borrow_mut()
                .connections
                .get_mut(&self.handle)
            {
                conn.buffers.remove(&stream);
            }
        }
        unframe(&framed?).map(<[u8]>::to_vec)
    }

    /// Waits for the next complete request the peer sent.
    pub async fn next_request(&self) -> Result<Request, TransportError> {
        self.wait(|conn| {
            let position = conn.opened_by_peer.iter().position(|id| {
                conn.buffers
                    .get(id)
                    .is_some_and(|b| b.finished || b.failed.is_some())
            })?;
            let stream = conn
                .opened_by_peer
                .remove(position)
                .expect("position is valid");
            let buffer = conn.buffers.remove(&stream).expect("buffer exists");
            let body = match buffer.failed {
                Some(reason) => Err(TransportError::Stream(reason)),
                None => unframe(&buffer.data).map(<[u8]>::to_vec),
            };
            Some(Ok(Request { stream, body }))
        })
        .await
    }

    /// Answers a request.
    pub fn respond(&self, stream: StreamId, body: &[u8]) -> Result<(), TransportError> {
        self.send_framed(stream, frame(body)?)
    }

    pub fn remote_address(&self) -> Option<SocketAddr> {
        let state = self.shared.state.borrow();
        state
            .connections
            .get(&self.handle)
            .map(|c| c.quic.remote_address())
    }

    /// Closes the connection; in-flight requests fail.
    pub fn close(&self) {
        if let Some(conn) = self
            .shared
            .state
            .borrow_mut()
            .connections
            .get_mut(&self.handle)
        {
            conn.quic.close(
                Instant::now(),
                VarInt::from_u32(0),
                bytes::Bytes::from_static(b"closed"),
            );
        }
        self.shared.wake_driver.notify(1);
    }
}

async fn receive(shared: std::rc::Weak<Shared>) {
    let mut buffer = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let received = strong.socket.recv_from(&mut buffer).await;
        match received {
            Ok((size, from)) => {
                strong
                    .state
                    .borrow_mut()
                    .inbox
                    .push_back((from, BytesMut::from(&buffer[..size])));
                strong.wake_driver.notify(1);
            }
            Err(error) => {
                tracing::error!(%error, "UDP receive failed; the endpoint stops");
                strong.state.borrow_mut().socket_error = Some(error.to_string());
                strong.progressed.notify(usize::MAX);
                return;
            }
        }
    }
}

async fn drive(shared: std::rc::Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let listener = strong.wake_driver.listen();
        let next_timeout = process(&strong);
        let outbox = std::mem::take(&mut strong.state.borrow_mut().outbox);
        for (destination, datagram) in outbox {
            if let Err(error) = strong.socket.send_to(&datagram, destination).await {
                tracing::warn!(%error, %destination, "UDP send failed");
            }
        }
        strong.progressed.notify(usize::MAX);
        if !strong.state.borrow().inbox.is_empty() || !strong.state.borrow().outbox.is_empty() {
            continue;
        }
        drop(strong);
        match next_timeout {
            Some(at) => {
                let sleep = glommio::timer::sleep(at.saturating_duration_since(Instant::now()));
                futures_lite::future::or(listener, sleep).await;
            }
            None => listener.await,
        }
    }
}

/// Feeds everything pending to quinn-proto and collects what to send.
/// Returns the earliest connection timer.
fn process(shared: &Shared) -> Option<Instant> {
    let mut guard = shared.state.borrow_mut();
    let state = &mut *guard;
    let now = Instant::now();
    let mut buffer = Vec::new();
    while let Some((from, datagram)) = state.inbox.pop_front() {
        buffer.clear();
        match state
            .endpoint
            .handle(now, from, None, None, datagram, &mut buffer)
        {
            Some(DatagramEvent::NewConnection(incoming)) => {
                buffer.clear();
                match state.endpoint.accept(incoming, now, &mut buffer, None) {
                    Ok((handle, quic)) => {
                        state.connections.insert(handle, Conn::new(quic));
                        state.accepted.push_back(handle);
                    }
                    Err(error) => {
                        if let Some(transmit) = error.response {
                            state
                                .outbox
                                .push((transmit.destination, buffer[..transmit.size].to_vec()));
                        }
                    }
                }
            }
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(conn) = state.connections.get_mut(&handle) {
                    conn.quic.handle_event(event);
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                state
                    .outbox
                    .push((transmit.destination, buffer[..transmit.size].to_vec()));
            }
            None => {}
        }
    }
    let mut earliest: Option<Instant> = None;
    let mut drained = Vec::new();
    for (handle, conn) in &mut state.connections {
        if conn.quic.poll_timeout().is_some_and(|at| at <= now) {
            conn.quic.handle_timeout(now);
        }
        while let Some(event) = conn.quic.poll_endpoint_events() {
            if let Some(event) = state.endpoint.handle_event(*handle, event) {
                conn.quic.handle_event(event);
            }
        }
        while let Some(event) = conn.quic.poll() {
            handle_app_event(conn, event);
        }
        conn.flush_writes();
        loop {
            buffer.clear();
            match conn.quic.poll_transmit(now, 1, &mut buffer) {
                Some(transmit) => state
                    .outbox
                    .push((transmit.destination, buffer[..transmit.size].to_vec())),
                None => break,
            }
        }
        if let Some(at) = conn.quic.poll_timeout() {
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
        if conn.quic.is_drained() {
            drained.push(*handle);
        }
    }
    for handle in drained {
        state.connections.remove(&handle);
    }
    earliest
}

fn handle_app_event(conn: &mut Conn, event: quinn_proto::Event) {
    use quinn_proto::{Event, StreamEvent};
    match event {
        Event::Connected => conn.connected = true,
        Event::ConnectionLost { reason } => conn.lost = Some(reason.to_string()),
        Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
            while let Some(id) = conn.quic.streams().accept(Dir::Bi) {
                conn.opened_by_peer.push_back(id);
                conn.buffers.entry(id).or_default();
                conn.read_stream(id);
            }
        }
        // Only streams someone waits on: a timed-out request's late answer
        // is dropped.
        Event::Stream(StreamEvent::Readable { id }) if conn.buffers.contains_key(&id) => {
            conn.read_stream(id);
        }
        Event::Stream(StreamEvent::Writable { .. }) => conn.flush_writes(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: glommio binds UDP with SO_REUSEPORT, so two endpoints on
    /// one port both bound and split the traffic; parallel test clusters
    /// timed out. Binding a taken port must fail.
    #[test]
    fn binding_a_port_in_use_fails() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let first = Endpoint::bind("127.0.0.1:0".parse().unwrap(), None, None).unwrap();
                let taken = first.local_addr().unwrap();
                assert!(matches!(
                    Endpoint::bind(taken, None, None),
                    Err(TransportError::Io(_))
                ));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn frames_round_trip_and_reject_damage() {
        let framed = frame(b"hello").unwrap();
        assert_eq!(unframe(&framed).unwrap(), b"hello");
        let mut bad = framed.clone();
        bad[9] ^= 1;
        assert_eq!(
            unframe(&bad),
            Err(TransportError::BadFrame("checksum mismatch"))
        );
        assert!(unframe(&framed[..framed.len() - 1]).is_err());
        assert!(unframe(&[1, 2, 3]).is_err());
        assert!(matches!(
            frame(&vec![0; MESSAGE_BYTES_MAX + 1]),
            Err(TransportError::MessageTooLarge { .. })
        ));
    }
}
