//! A message for actix's "431 Request Header Fields Too Large". actix-http refuses a
//! request head over its 128 KiB buffer (or with more than 96 headers) itself, with an
//! empty body, before any handler runs; this socket wrapper recognises that exact response
//! as it is written and adds a JSON error body naming the limit. Everything else passes
//! through untouched.

use actix_web::rt::net::TcpStream;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// actix-http's limit on an unparsed request head (`h1::decoder::MAX_BUFFER_SIZE`).
pub const MAX_HEAD_BYTES: usize = 128 << 10;
/// actix-http's limit on the number of headers (`h1::decoder::MAX_HEADERS`).
pub const MAX_HEADERS: usize = 96;

/// A TCP stream whose bodiless 431 responses get a message.
pub struct HeadLimitIo {
    io: TcpStream,
    /// A rewritten response still to be written, from `sent`.
    pending: Vec<u8>,
    sent: usize,
}

impl HeadLimitIo {
    pub fn new(io: TcpStream) -> Self {
        HeadLimitIo { io, pending: Vec::new(), sent: 0 }
    }
    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

/// The 431 response with a JSON body, if `buf` is exactly actix's bodiless one.
pub fn with_message(buf: &[u8]) -> Option<Vec<u8>> {
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    if !buf.starts_with(b"HTTP/1.1 431 ") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let at = buf.windows(EMPTY.len()).position(|w| w.eq_ignore_ascii_case(EMPTY))?;
    let body = serde_json::to_vec(&serde_json::json!({"error": {
        "message": format!("the request header is too large: at most {MAX_HEAD_BYTES} bytes and {MAX_HEADERS} header fields are allowed"),
        "type": "RequestHeaderFieldsTooLargeError", "param": "headers", "code": 431,
    }}))
    .ok()?;
    let mut out = Vec::with_capacity(buf.len() + body.len() + 40);
    out.extend_from_slice(&buf[..at]);
    out.extend_from_slice(format!("\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(&buf[at + EMPTY.len()..]);
    out.extend_from_slice(&body);
    Some(out)
}

impl AsyncRead for HeadLimitIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeadLimitIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        ready!(me.poll_pending(cx))?;
        if let Some(out) = with_message(buf) {
            // The whole of `buf` is taken; the rewritten bytes go out from poll_pending.
            me.pending = out;
            if let Poll::Ready(Err(e)) = me.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut me.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        ready!(me.poll_pending(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        ready!(me.poll_pending(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bodiless_431_is_rewritten() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(with_message(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.contains("content-type: application/json") && !h.contains("content-length: 0"), "{h}");
        assert!(h.contains(&format!("content-length: {}", body.len())), "{h}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], 431);
        assert!(with_message(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(with_message(b"HTTP/1.1 431 X\r\ncontent-length: 5\r\n\r\nhello").is_none());
    }
}
