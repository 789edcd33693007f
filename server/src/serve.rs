//! The server's front door: accepts TCP connections up to `limits.max_connections`, serves
//! HTTP/1.1 (with upgrades, for WebSockets) with a deadline on request headers, and shuts
//! down gracefully.
//!
//! `axum::serve` offers neither a connection cap nor a header-read timeout, so this is the
//! same hyper loop with both: a slowloris client is cut after `limits.header_timeout_ms`,
//! and past the cap a connection is closed at once instead of running the process out of
//! file descriptors (where `/healthz` would stop answering too).

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower::ServiceExt;

/// Open TCP connections, shared with the WebSocket upgrade (which keeps a reserve of them
/// for plain HTTP).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: AtomicUsize,
}

impl Connections {
    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A connection that counts itself out when dropped.
struct Counted {
    stream: TcpStream,
    connections: Arc<Connections>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// What the front door enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DoorLimits {
    /// `limits.max_connections`.
    pub(crate) max_connections: usize,
    /// `limits.header_timeout_ms`.
    pub(crate) header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then closes the listener, awaits
/// `closing` (open connections keep working meanwhile) and lets open requests finish (up to
/// `drain`).
///
/// # Errors
/// The listener failed in a way that retrying cannot fix.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    connections: Arc<Connections>,
    limits: DoorLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    closing: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> io::Result<()> {
    // Dropping `stop` tells every connection to finish its request and close; each holds a
    // `done` receiver, so `done_tx.closed()` completes when they all have.
    let (stop, _) = watch::channel(());
    let (done_tx, done) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused_logged = false;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or a connection reset before accept: wait a little
                    // rather than spin.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if connections.open.fetch_add(1, Ordering::Relaxed) >= limits.max_connections {
            connections.open.fetch_sub(1, Ordering::Relaxed);
            if !refused_logged {
                tracing::warn!(
                    max = limits.max_connections,
                    "refusing connections: limits.max_connections reached"
                );
                refused_logged = true;
            }
            drop(stream);
            continue;
        }
        refused_logged = false;
        // Without TCP_NODELAY, a push written right after another waits for the client's
        // delayed ACK (40 ms on Linux): Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let io = TokioIo::new(Counted { stream, connections: connections.clone() });
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let app = app.clone();
            async move {
                let response = match app.oneshot(request.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response)
            }
        });
        let mut stopping = stop.subscribe();
        let done = done.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let mut asked = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::trace!("connection from {peer} ended: {error}");
                        }
                        break;
                    }
                    _ = stopping.changed(), if !asked => {
                        asked = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(done);
        });
    }
    // New connections are refused from here on; open ones keep working while `closing` runs.
    drop(listener);
    closing.await;
    drop(stop);
    drop(done);
    if tokio::time::timeout(drain, done_tx.closed()).await.is_err() {
        tracing::info!("requests still open after {} s; stopping anyway", drain.as_secs());
    }
    Ok(())
}
