//! Bounded waits against the real `kiln serve` binary (demo model): a client that sends
//! half a body and stalls gets 408 after the body-read deadline; after SIGTERM the
//! process exits within the grace period plus a few seconds whatever clients do, and
//! requests still queued at SIGTERM get their 503 at once.

mod common;

use common::proc::{Proc, KILN};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn serve(args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(KILN);
    cmd.args(["serve", "--port", "0", "--skip-server-warmup"]).args(args);
    let mut p = Proc::spawn(cmd);
    let base = p.wait_ready();
    (p, base)
}

/// Opens a connection and sends the head of a POST /generate announcing 1000 body bytes,
/// then 10 of them, and nothing more.
fn stalled_body(base: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"text\": \"a"
    );
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Reads the response (until the server closes or `within` passes): (status, text).
fn read_response(s: &mut TcpStream, within: Duration) -> (Option<u16>, String) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < within {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                // A complete JSON body after the head is enough.
                if let Some(i) = text.find("\r\n\r\n") {
                    if text[i..].trim_end().ends_with('}') {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (status, text)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[test]
fn a_stalled_body_gets_408_after_the_read_deadline() {
    let (_p, base) = serve(&["--body-read-timeout-secs", "1"]);
    let mut s = stalled_body(&base);
    let t0 = Instant::now();
    let (status, text) = read_response(&mut s, Duration::from_secs(8));
    assert_eq!(status, Some(408), "after {:?}: {text:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(text.contains("request body") && text.contains("1 s"), "the message names the limit: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_period_whatever_clients_do() {
    // A long body deadline, so only shutdown can end the stalled reads.
    let (mut p, base) = serve(&["--shutdown-grace-secs", "2", "--body-read-timeout-secs", "120"]);
    let mut stalled: Vec<TcpStream> = (0..3).map(|_| stalled_body(&base)).collect();
    // One request far longer than the grace period.
    let c = client();
    let long = tokio::spawn(c.post(format!("{base}/generate")).json(&json!({"text": "Hello", "sampling_params": {"max_new_tokens": 8000, "ignore_eos": true}})).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    p.sigterm();
    // The stalled readers learn at once that the server is going away.
    let (status, text) = read_response(&mut stalled[0], Duration::from_secs(2));
    assert_eq!(status, Some(503), "after {:?}: {text:?}", t0.elapsed());
    let st = tokio::task::spawn_blocking(move || {
        let st = p.wait_exit(Duration::from_secs(30));
        (st, p)
    });
    let (st, p) = st.await.unwrap();
    let took = t0.elapsed();
    assert!(st.success(), "exit status {st}: {:#?}", p.log);
    assert!(took < Duration::from_secs(2 + 3), "exited {took:?} after SIGTERM (grace 2 s): {:#?}", p.log);
    let r = long.await.unwrap().unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_at_sigterm_get_503_at_once() {
    let (mut p, base) = serve(&["--shutdown-grace-secs", "6", "--max-running-requests", "1"]);
    let c = client();
    let body = json!({"text": "Hello", "sampling_params": {"max_new_tokens": 8000, "ignore_eos": true}});
    let running = tokio::spawn(c.post(format!("{base}/generate")).json(&body).send());
    // /get_load answers SGLang's shape: one entry per data-parallel rank (kiln has one).
    let load = || async { c.get(format!("{base}/get_load")).send().await.unwrap().json::<serde_json::Value>().await.unwrap()[0].clone() };
    let t = Instant::now();
    while load().await["num_running_reqs"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(30), "the first request never ran: {}", load().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued = tokio::spawn(c.post(format!("{base}/generate")).json(&body).send());
    while load().await["num_waiting_reqs"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(30), "the second request never queued: {}", load().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    p.sigterm();
    let r = queued.await.unwrap().unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(text.contains("shutting down") || text.contains("shut down"), "{text}");
    assert!(took < Duration::from_secs(2), "the queued request waited {took:?} (grace 6 s)");
    // The running one keeps its grace period.
    let r = running.await.unwrap().unwrap();
    assert_eq!(r.status(), 503);
    assert!(t0.elapsed() > Duration::from_secs(5), "the running request was cut before the grace ended");
    let st = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(20))).await.unwrap();
    assert!(st.success());
}
