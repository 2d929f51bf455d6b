//! A `kiln` (or `launch_server.sh`) child process for the binary tests: its log lines,
//! the ready line's address, SIGTERM, and a bounded wait for exit.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let (tx, rx) = mpsc::channel();
        for r in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Proc { child, lines: rx, log: vec![] }
    }

    /// Waits for the ready line; returns the base URL.
    pub fn wait_ready(&mut self) -> String {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.log.push(l.clone());
                if l.contains("The server is fired up and ready to roll!") {
                    let url = l.split("Listening on ").nth(1).expect("address in the ready line").trim().to_string();
                    return url;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("server exited early ({st}): {:#?}", self.log);
            }
        }
        panic!("server not ready in time: {:#?}", self.log);
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok);
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.log.push(l);
                }
                return st;
            }
            assert!(t0.elapsed() < within, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
