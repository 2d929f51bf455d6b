//! A few threads that turn request text into token ids (chat template, tokenizer) off the
//! HTTP workers: a big prompt never holds up a worker, so `/health` and other requests
//! keep answering. The thread count also bounds how many prompts are tokenized at once,
//! and with it the tokenizer's memory. Plain threads rather than tokio's blocking pool:
//! nothing waits for them at exit.

use super::errors::{ApiError, ApiResult};
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub struct PromptPool {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl PromptPool {
    pub fn new(threads: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("kiln-prompt-{i}")).spawn(move || loop {
                // The lock is held only while waiting for the next job.
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            });
            if let Err(e) = spawned {
                tracing::error!("could not start a prompt thread: {e}");
            }
        }
        PromptPool { tx: Mutex::new(tx) }
    }

    /// Runs `f` on a pool thread. A client that goes away while `f` waits in the queue
    /// costs nothing: the job is skipped. A panic in `f` is a 500.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return;
            }
            if let Ok(out) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(out);
            }
        });
        let sent = self.tx.lock().map(|t| t.send(job).is_ok()).unwrap_or(false);
        if !sent {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        rx.await.map_err(|_| ApiError::internal("tokenizing the request failed (internal error)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_off_the_caller_and_survives_a_panic() {
        let pool = PromptPool::new(2);
        let caller = std::thread::current().id();
        let other = pool.run(move || std::thread::current().id() != caller).await.unwrap();
        assert!(other);
        let e = pool.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert_eq!(e.status.as_u16(), 500);
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
