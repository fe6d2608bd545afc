//! The simulator's HTTP/1.1 server: an accept loop with one Tokio task per connection.
//!
//! The loop is written with hyper directly, not with `axum::serve`, because chaos mode must
//! end a connection without a reply. A handler requests that through the
//! [`ConnectionHandle`] in its request's extensions, and the connection's task then drops the
//! connection. For a reset it first sets `SO_LINGER` to zero, so that closing the socket sends
//! a TCP RST in place of the usual FIN.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::handler;
use super::state::SimState;

/// Pause after an accept error that is not about one connection, such as running out of file
/// descriptors, so that the loop does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Way to end a connection without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// Close with a TCP RST: the client reads "connection reset by peer".
    Reset,
    /// Close with a TCP FIN: the client reads end of stream before any reply.
    Close,
}

/// The connection a request arrived on, put into every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub peer: SocketAddr,
    abort: mpsc::Sender<Abort>,
    closing: watch::Receiver<bool>,
}

impl ConnectionHandle {
    /// Requests that the connection's task drop the connection. The caller's response future is
    /// dropped with it, so it should not finish: await [`std::future::pending`] after this.
    pub fn abort(&self, how: Abort) {
        // One request is in flight per HTTP/1.1 connection, so the one-place channel is free.
        // A full or closed channel means the connection is ending anyway.
        let _ = self.abort.try_send(how);
    }

    /// Waits for `duration`, and returns `false` early when the server starts shutting down.
    pub async fn wait_unless_closing(&self, duration: Duration) -> bool {
        let mut closing = self.closing.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            _ = closing.wait_for(|closing| *closing) => false,
        }
    }
}

/// Accepts connections until `shutdown` resolves, then lets each connection finish its
/// request in progress and waits for all of them.
pub async fn serve(
    listener: TcpListener,
    state: Arc<SimState>,
    shutdown: impl Future<Output = ()>,
) {
    let (closing_sender, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let state = Arc::clone(&state);
                    connections.spawn(serve_connection(stream, peer, state, closing.clone()));
                }
                Err(error) => pause_after_accept_error(error).await,
            },
            Some(joined) = connections.join_next() => log_connection_panic(joined),
        }
    }

    drop(listener);
    closing_sender.send_replace(true);
    while let Some(joined) = connections.join_next().await {
        log_connection_panic(joined);
    }
}

async fn pause_after_accept_error(error: io::Error) {
    // These concern one connection that the client gave up on, so the next accept can go on.
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%error, "Fastly API simulator failed to accept a connection, retrying");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

fn log_connection_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(%error, "Fastly API simulator connection task panicked");
    }
}

/// End of a connection's task.
enum Ended {
    Served(Result<(), hyper::Error>),
    Aborted(Abort),
}

/// Serves the requests of one connection until the client closes it, a handler aborts it, or
/// the server shuts down.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: Arc<SimState>,
    mut closing: watch::Receiver<bool>,
) {
    // Replies are small, so waiting to fill a segment only adds delay.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "failed to set TCP_NODELAY on a simulator connection");
    }
    let (abort, mut aborted) = mpsc::channel(1);
    let handle = ConnectionHandle {
        peer,
        abort,
        closing: closing.clone(),
    };
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let mut request: Request = request.map(Body::new);
        request.extensions_mut().insert(handle.clone());
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handler::handle(state, request).await) }
    });

    let ended = {
        // The connection borrows the stream, so the stream outlives it and can still be set
        // to reset when the connection is dropped. There is no header read timeout, as with
        // axum::serve (axum 0.8) before, so idle connections in a client's pool stay open.
        let connection = http1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(&mut stream), service);
        tokio::pin!(connection);
        let mut shutting_down = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => break Ended::Served(result),
                Some(how) = aborted.recv() => break Ended::Aborted(how),
                _ = closing.wait_for(|closing| *closing), if !shutting_down => {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    };

    match ended {
        Ended::Served(Ok(())) => {}
        Ended::Served(Err(error)) => {
            tracing::debug!(%peer, %error, "simulator connection ended with an error");
        }
        Ended::Aborted(Abort::Reset) => {
            if let Err(error) = stream.set_zero_linger() {
                tracing::warn!(
                    %peer,
                    %error,
                    "failed to set SO_LINGER to reset a simulator connection, closing it with a FIN"
                );
            }
        }
        Ended::Aborted(Abort::Close) => {}
    }
    // Dropping the stream closes the socket: with a RST after set_zero_linger, else a FIN.
    drop(stream);
}
