//! A service on an executor of its own — a MemDS or a GAC process — that
//! reports the address it bound before serving, and stops when dropped.

use std::future::Future;
use std::net::SocketAddr;

use glommio::{LocalExecutorBuilder, Placement};

/// What a service's task is given: where to report its bound address
/// (or why it could not start), and the signal to stop.
pub(crate) type Ready = async_channel::Sender<Result<SocketAddr, String>>;
pub(crate) type Stopped = async_channel::Receiver<()>;

/// A running service thread.
#[derive(Debug)]
pub(crate) struct ServiceThread {
    addr: SocketAddr,
    stop: async_channel::Sender<()>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

impl ServiceThread {
    /// Runs `service` on a new executor named `name`, and waits until it
    /// reports its address.
    pub(crate) fn spawn<F, Fut>(name: &str, service: F) -> Result<ServiceThread, String>
    where
        F: FnOnce(Ready, Stopped) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let (ready_sender, ready) = async_channel::bounded(1);
        let thread = LocalExecutorBuilder::new(Placement::Unbound)
            .name(name)
            .spawn(move || service(ready_sender, stopped))
            .map_err(|e| e.to_string())?;
        let addr = futures_lite::future::block_on(ready.recv())
            .map_err(|_| format!("{name} exited while starting"))??;
        Ok(ServiceThread {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the service stops (it runs until the process ends).
    pub(crate) fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServiceThread {
    fn drop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
