//! Client-disconnect detection. actix-web keeps running a handler whose client has hung
//! up (it only notices on the next write), so each connection gets a probe: a duplicate
//! of its socket that we `peek` (never read) every few milliseconds. EOF or a reset means
//! the client is gone; the waiting handler or stream then ends, which drops its tickets
//! and aborts the requests in the scheduler.

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use std::any::Any;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(25);

pub struct ConnProbe(std::net::TcpStream);

impl ConnProbe {
    /// True once the peer has closed or reset the connection.
    pub fn is_closed(&self) -> bool {
        let mut b = [0u8; 1];
        match self.0.peek(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => false,
            Err(_) => true,
        }
    }
}

/// `HttpServer::on_connect` hook: attaches a probe to plain TCP connections.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(s) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Ok(fd) = s.as_fd().try_clone_to_owned() {
            let dup = std::net::TcpStream::from(fd);
            // Same open file description as tokio's socket, which is non-blocking already.
            if dup.set_nonblocking(true).is_ok() {
                ext.insert(Arc::new(ConnProbe(dup)));
            }
        }
    }
}

pub fn probe(req: &HttpRequest) -> Option<Arc<ConnProbe>> {
    req.conn_data::<Arc<ConnProbe>>().cloned()
}

/// Resolves when the client has gone away; never, when the connection has no probe.
pub async fn closed(probe: Option<Arc<ConnProbe>>) {
    match probe {
        None => std::future::pending().await,
        Some(p) => loop {
            if p.is_closed() {
                return;
            }
            tokio::time::sleep(POLL).await;
        },
    }
}
