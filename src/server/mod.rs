//! The HTTP server: SGLang's native API and the OpenAI-compatible API over the scheduler.
//! Handlers validate, tokenize and talk to the scheduler through tickets; they never
//! touch the device. See `shared/docs/sglang-api.md` for the contract.
//!
//! Files: `mod.rs` (this: state, app, start/stop, auth), `errors.rs`, `validate.rs`,
//! `exec.rs` (submit/collect), `conn.rs` (disconnect probe), `prompt_pool.rs` (tokenizing
//! off the HTTP workers), `head_limit.rs` (a message for 431), `sse.rs`, `native.rs` (`/generate`), `openai.rs`
//! (`/v1/completions`, `/v1/chat/completions`), `chat.rs` (chat request -> prompt),
//! `admin.rs` (health, info, abort, flush, tokenize), `metrics.rs` (Prometheus),
//! `reasoning.rs` (`--reasoning-parser`), `tool_choice.rs` + `tool_calls.rs` (`tools`,
//! `--tool-call-parser`), `constraint.rs` (structured output).

mod admin;
mod chat;
mod conn;
mod constraint;
pub mod errors;
mod exec;
mod head_limit;
mod metrics;
mod native;
mod openai;
mod prompt_pool;
mod reasoning;
mod sse;
mod tool_calls;
mod tool_choice;
pub mod validate;

pub use reasoning::PARSERS as REASONING_PARSERS;
pub use tool_calls::PARSERS as TOOL_CALL_PARSERS;
pub use validate::SamplingDefaults;

use crate::scheduler::{Codec, GenRequest, SchedulerHandle, StopConfig};
use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse};
use serde_json::{json, Map, Value};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Server settings (from the command line).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Id shown by `/v1/models`.
    pub served_model_name: String,
    pub model_path: String,
    pub tokenizer_path: String,
    pub api_key: Option<String>,
    /// Largest accepted request body (413 beyond).
    pub max_body_bytes: usize,
    /// Longest time a client may take to send a request body (408 after).
    pub body_read_timeout: Duration,
    /// Chat sampling defaults from generation_config.json.
    pub chat_defaults: SamplingDefaults,
    /// How long in-flight requests may run after SIGTERM before they are aborted; the
    /// process exits at most [`STOP_TIMEOUT`] later.
    pub shutdown_grace: Duration,
    pub workers: usize,
    /// Every server flag, for `/get_server_info`.
    pub server_args: Map<String, Value>,
    /// `--reasoning-parser` (e.g. `qwen3`): split chat output at `</think>`.
    pub reasoning_parser: Option<String>,
    /// `--enable-cache-report`: OpenAI usage reports `prompt_tokens_details.cached_tokens`.
    pub enable_cache_report: bool,
    /// `--tool-call-parser` (`qwen3_coder`, the default): parse tool calls in chat output.
    pub tool_call_parser: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            served_model_name: "default".into(),
            model_path: "default".into(),
            tokenizer_path: "default".into(),
            api_key: None,
            max_body_bytes: 32 << 20,
            body_read_timeout: Duration::from_secs(60),
            chat_defaults: SamplingDefaults::default(),
            shutdown_grace: Duration::from_secs(20),
            workers: 2,
            server_args: Map::new(),
            reasoning_parser: None,
            enable_cache_report: false,
            tool_call_parser: Some("qwen3_coder".into()),
        }
    }
}

/// Shared by all handlers.
pub struct AppState {
    pub cfg: ServerConfig,
    pub sched: SchedulerHandle,
    pub codec: Arc<dyn Codec>,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    /// Flips to true at shutdown: wakes handlers still reading a body.
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    /// Flips to true when the HTTP server stops (after the drain): idle keep-alive
    /// connections close.
    http_stop_tx: tokio::sync::watch::Sender<bool>,
    /// Threads that tokenize prompts, so HTTP workers never do.
    pub prompts: prompt_pool::PromptPool,
    pub created: u64,
    pub started: Instant,
    pub http: metrics::HttpCounters,
    /// The grammar engine for structured output, built on first use (`constraint.rs`).
    grammar: std::sync::OnceLock<Result<Arc<crate::sampling::grammar::GrammarEngine>, String>>,
}

pub type State = web::Data<AppState>;

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl AppState {
    pub fn new(cfg: ServerConfig, sched: SchedulerHandle, codec: Arc<dyn Codec>) -> Arc<Self> {
        let prompts = prompt_pool::PromptPool::new(cfg.workers.clamp(1, 4));
        // The tokenizer works out its token-count bound on first use (a vocabulary scan):
        // now, rather than in the first request.
        let _ = codec.encode_within("", false, 0);
        Arc::new(AppState {
            cfg,
            sched,
            codec,
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            shutdown_tx: tokio::sync::watch::channel(false).0,
            http_stop_tx: tokio::sync::watch::channel(false).0,
            prompts,
            created: unix_now() as u64,
            started: Instant::now(),
            http: metrics::HttpCounters::default(),
            grammar: std::sync::OnceLock::new(),
        })
    }
    pub fn context_len(&self) -> usize {
        self.sched.info().config.context_len
    }
    pub fn vocab(&self) -> usize {
        self.sched.info().vocab_limit
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed) && !self.shutting_down.load(Relaxed) && self.sched.is_alive()
    }
    pub fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }
    /// Resolves (`wait_for(|s| *s)`) once the server starts shutting down.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// One short greedy request through the whole stack (tokenizer, scheduler, backend).
    /// Blocking; call before serving.
    pub fn warm_up(&self) -> anyhow::Result<()> {
        let prompt = self.codec.encode("The capital city of France is", false)?;
        let stop = StopConfig { max_new_tokens: 8, ..Default::default() };
        let req = GenRequest::new("WARMUP", prompt, crate::sampling::SamplingParams::greedy(), stop);
        let mut t = self.sched.submit(req)?;
        loop {
            let o = t.blocking_recv().ok_or_else(|| anyhow::anyhow!("the scheduler stopped during warm-up"))?;
            match o.finish {
                Some(crate::scheduler::FinishReason::Abort { message, .. }) => anyhow::bail!("warm-up failed: {message}"),
                Some(_) => return Ok(()),
                None => {}
            }
        }
    }

    /// Stops taking requests: queued ones and bodies still being read get 503 at once,
    /// running ones may finish for the grace period, the rest are aborted (each gets an
    /// explicit 503 / abort finish), then the HTTP server stops, giving connections at most
    /// [`STOP_TIMEOUT`] to take their last bytes.
    pub async fn graceful_stop(self: &Arc<Self>, server: ServerHandle) {
        self.shutting_down.store(true, Relaxed);
        self.shutdown_tx.send_replace(true);
        let me = self.clone();
        let grace = self.cfg.shutdown_grace;
        let _ = tokio::task::spawn_blocking(move || me.sched.shutdown(grace)).await;
        self.http_stop_tx.send_replace(true);
        server.stop(true).await;
    }
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let method_not_allowed = || web::to(|| async { HttpResponse::MethodNotAllowed().json(json!({"detail": "Method Not Allowed"})) });
    let r = |path: &str| web::resource(path).default_service(method_not_allowed());
    cfg.service(r("/generate").route(web::post().to(native::generate)).route(web::put().to(native::generate)))
        .service(r("/v1/completions").route(web::post().to(openai::completions)))
        .service(r("/v1/chat/completions").route(web::post().to(openai::chat_completions)))
        .service(r("/v1/models").route(web::get().to(admin::models)))
        .service(r("/v1/models/{model:.*}").route(web::get().to(admin::model_card)))
        .service(r("/health").route(web::get().to(admin::health)))
        .service(r("/health_generate").route(web::get().to(admin::health_generate)))
        .service(r("/ping").route(web::get().to(admin::ping)))
        .service(r("/model_info").route(web::get().to(admin::model_info)))
        .service(r("/get_model_info").route(web::get().to(admin::model_info)))
        .service(r("/server_info").route(web::get().to(admin::server_info)))
        .service(r("/get_server_info").route(web::get().to(admin::server_info)))
        .service(r("/get_load").route(web::get().to(admin::load)))
        .service(r("/v1/loads").route(web::get().to(admin::load)))
        .service(r("/flush_cache").route(web::post().to(admin::flush_cache)).route(web::get().to(admin::flush_cache)))
        .service(r("/abort_request").route(web::post().to(admin::abort_request)))
        .service(r("/tokenize").route(web::post().to(admin::tokenize)))
        .service(r("/v1/tokenize").route(web::post().to(admin::tokenize)))
        .service(r("/detokenize").route(web::post().to(admin::detokenize)))
        .service(r("/v1/detokenize").route(web::post().to(admin::detokenize)))
        .service(r("/metrics").route(web::get().to(metrics::metrics)))
        .default_service(web::to(|| async { HttpResponse::NotFound().json(json!({"detail": "Not Found"})) }));
}

/// API-key check (everything but `/health*`, `/metrics` and OPTIONS) and HTTP counters.
async fn gatekeeper(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error> {
    let state = req.app_data::<State>().cloned();
    if let Some(state) = &state {
        if let Some(key) = &state.cfg.api_key {
            let path = req.path();
            let open = path.starts_with("/health") || path.starts_with("/metrics") || req.method() == actix_web::http::Method::OPTIONS;
            let ok = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.strip_prefix("Bearer ").is_some_and(|k| k.trim() == key));
            if !open && !ok {
                state.http.record("unauthorized", 401);
                let resp = HttpResponse::Unauthorized().json(json!({"error": "Unauthorized"}));
                return Ok(req.into_response(resp).map_into_right_body());
            }
        }
    }
    let pattern = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let res = next.call(req).await?;
    if let Some(state) = &state {
        state.http.record(&pattern, res.status().as_u16());
    }
    Ok(res.map_into_left_body())
}

/// After the scheduler has drained at shutdown, how long connections may still take to
/// receive their last bytes (a client that stopped reading cannot hold the process).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// A started HTTP server.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub handle: ServerHandle,
    pub server: actix_web::dev::Server,
}

/// Builds the HTTP server on `listener` (not yet polled: await `Running::server`). It is
/// actix-web's `HttpServer::listen` spelled out, to put [`head_limit::HeadLimitIo`] under
/// the HTTP/1 service.
pub fn start(state: Arc<AppState>, listener: TcpListener) -> std::io::Result<Running> {
    use actix_http::{HttpService, Protocol};
    use actix_service::{map_config, IntoServiceFactory, ServiceFactoryExt};
    use actix_web::dev::{fn_service, AppConfig};
    let addr = listener.local_addr()?;
    let workers = state.cfg.workers.max(1);
    let data = web::Data::from(state);
    let server = actix_web::dev::Server::build()
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(STOP_TIMEOUT.as_secs())
        .listen("kiln-http", listener, move || {
            let stopping = data.clone();
            let app = App::new().app_data(data.clone()).wrap(from_fn(gatekeeper)).configure(configure);
            let app = app.into_factory().map_err(|e: actix_web::Error| e.error_response());
            let http = HttpService::build()
                .keep_alive(Duration::from_secs(5))
                .client_request_timeout(Duration::from_secs(5))
                .local_addr(addr)
                // Idle keep-alive connections close when the server stops.
                .graceful_shutdown_signal(move || {
                    let mut rx = stopping.http_stop_tx.subscribe();
                    async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    }
                })
                .on_connect_ext(|io: &head_limit::HeadLimitIo, ext: &mut actix_web::dev::Extensions| conn::on_connect(io.get_ref(), ext))
                .finish(map_config(app, move |_| AppConfig::__priv_test_new(false, addr.to_string(), addr)));
            fn_service(|io: actix_web::rt::net::TcpStream| async move {
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((head_limit::HeadLimitIo::new(io), Protocol::Http1, peer))
            })
            .and_then(http)
        })?
        .run();
    Ok(Running { addr, handle: server.handle(), server })
}

/// Serves until SIGTERM/SIGINT (or the server stops), then shuts down gracefully.
/// Run inside an actix/tokio runtime.
pub async fn serve_until_signal(state: Arc<AppState>, running: Running) -> std::io::Result<()> {
    let Running { handle, server, .. } = running;
    let server_task = tokio::spawn(server);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining in-flight requests"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining in-flight requests"),
    }
    state.graceful_stop(handle).await;
    let _ = server_task.await;
    tracing::info!("server stopped");
    Ok(())
}
