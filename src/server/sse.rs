//! Server-Sent Events framing: each event is `data: <compact JSON>\n\n`; a stream ends
//! with `data: [DONE]\n\n`. No `event:` lines, no comments.

use actix_web::web::Bytes;
use actix_web::HttpResponse;
use futures_util::stream::{Stream, StreamExt};
use serde_json::Value;

pub fn event(v: &Value) -> Bytes {
    let mut s = String::with_capacity(128);
    s.push_str("data: ");
    s.push_str(&v.to_string());
    s.push_str("\n\n");
    Bytes::from(s)
}

pub fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// A 200 `text/event-stream` response over `events`.
pub fn response(events: impl Stream<Item = Bytes> + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events.map(Ok::<_, actix_web::Error>))
}
