//! TCP listeners for the HTTP endpoints (DynamoDB's, Prometheus scrapes).
//!
//! glommio's `TcpListener::bind` sets `SO_REUSEPORT` (so every core can
//! share a port) but not `SO_REUSEADDR`, so it fails while connections an
//! earlier process served on the port linger in TIME_WAIT (a minute),
//! although nothing listens there: a restarted process, or a test cluster
//! on the ports of one that ran before it, could not start. Two CI runs
//! failed so ("DynamoDB endpoint …: Address already in use").

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;

/// A listener on `addr` with both `SO_REUSEADDR` and `SO_REUSEPORT`, for
/// this executor.
pub fn listen(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use glommio::net::TcpListener;
    use std::os::fd::FromRawFd;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that nothing
    // else owns: `into_raw_fd` gave up the socket's ownership of it.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Whether a listener without `SO_REUSEADDR` (as glommio binds) would
    /// be refused the port.
    fn refused_without_reuse_address(addr: SocketAddr) -> bool {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("a socket");
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        socket.bind(&addr.into()).is_err()
    }

    /// A port whose listener is gone while the server's end of a
    /// connection it accepted waits in TIME_WAIT (the server closed
    /// first), waited for with a bound.
    fn port_in_time_wait() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = listener.local_addr().expect("its address");
        let mut client = std::net::TcpStream::connect(addr).expect("connected");
        let (server, _) = listener.accept().expect("accepted");
        drop(server);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest);
        drop(client);
        drop(listener);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !refused_without_reuse_address(addr) {
            assert!(
                std::time::Instant::now() < deadline,
                "the port never reached TIME_WAIT"
            );
            std::thread::yield_now();
        }
        addr
    }

    #[test]
    fn a_port_with_connections_in_time_wait_can_be_listened_on_again() {
        let addr = port_in_time_wait();
        let listened = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move { listen(addr).map(drop).map_err(|e| e.to_string()) })
            .expect("an executor")
            .join()
            .expect("it ran");
        assert_eq!(listened, Ok(()));
    }
}
