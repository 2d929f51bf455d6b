//! `GET /metrics`: Prometheus text exposition (SGLang's metric names where they exist).

use super::State;
use crate::scheduler::stats::Histogram;
use actix_web::HttpResponse;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

/// HTTP responses by route pattern and status.
#[derive(Default)]
pub struct HttpCounters {
    counts: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpCounters {
    pub fn record(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.counts.lock() {
            *m.entry((route.to_string(), status)).or_insert(0) += 1;
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    let (buckets, count, sum) = h.snapshot();
    for (le, c) in buckets {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

pub async fn metrics(state: State) -> HttpResponse {
    let st = state.sched.stats();
    let labels = format!("model_name=\"{}\"", state.cfg.served_model_name.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::new();
    let gauges: [(&str, &str, f64); 8] = [
        ("sglang:num_running_reqs", "Requests in the running batch.", st.running.load(Relaxed) as f64),
        ("sglang:num_queue_reqs", "Requests waiting for a slot.", st.queued.load(Relaxed) as f64),
        ("sglang:gen_throughput", "Generation throughput (tokens/s).", st.gen_throughput()),
        ("kiln:slots_used", "State slots in use.", st.slots_used.load(Relaxed) as f64),
        ("kiln:slots_total", "State slots in the pool.", st.slots_total.load(Relaxed) as f64),
        ("kiln:kv_blocks_used", "KV blocks in use.", st.blocks_used.load(Relaxed) as f64),
        ("kiln:kv_blocks_total", "KV blocks in the pool.", st.blocks_total.load(Relaxed) as f64),
        ("kiln:ready", "1 when the server is serving.", if state.is_ready() { 1.0 } else { 0.0 }),
    ];
    for (name, help, v) in gauges {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
    let counters: [(&str, &str, u64); 9] = [
        ("sglang:num_requests_total", "Requests submitted to the scheduler.", st.requests_submitted.load(Relaxed)),
        ("sglang:prompt_tokens_total", "Prompt tokens processed.", st.prompt_tokens.load(Relaxed)),
        ("sglang:generation_tokens_total", "Tokens generated.", st.generation_tokens.load(Relaxed)),
        ("kiln:requests_finished_total", "Requests finished normally.", st.requests_finished.load(Relaxed)),
        ("sglang:num_aborted_requests_total", "Requests aborted.", st.requests_aborted.load(Relaxed)),
        ("kiln:requests_rejected_total", "Requests refused (queue full or shutting down).", st.requests_rejected.load(Relaxed)),
        ("kiln:scheduler_steps_total", "Backend forward steps.", st.steps.load(Relaxed)),
        ("kiln:retractions_total", "Sequences retracted for lack of KV blocks.", st.retractions.load(Relaxed)),
        ("kiln:backend_errors_total", "Failed backend calls.", st.backend_errors.load(Relaxed)),
    ];
    for (name, help, v) in counters {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
    histogram(&mut out, "sglang:time_to_first_token_seconds", "Time to first token.", &labels, &st.ttft);
    histogram(&mut out, "sglang:inter_token_latency_seconds", "Time between tokens of a request.", &labels, &st.itl);
    histogram(&mut out, "sglang:e2e_request_latency_seconds", "Request latency, arrival to finish.", &labels, &st.e2e);
    histogram(&mut out, "sglang:queue_time_seconds", "Time from arrival to admission.", &labels, &st.queue_time);
    histogram(&mut out, "kiln:decode_forward_seconds", "Backend forward of steps with decode rows only.", &labels, &st.decode_forward);
    histogram(&mut out, "kiln:decode_step_seconds", "Whole scheduler steps with decode rows only (forward and the host's work).", &labels, &st.decode_step);
    header(&mut out, "kiln:http_responses_total", "counter", "HTTP responses by route and status.");
    if let Ok(m) = state.http.counts.lock() {
        for ((route, code), n) in m.iter() {
            let _ = writeln!(out, "kiln:http_responses_total{{{labels},route=\"{route}\",code=\"{code}\"}} {n}");
        }
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(out)
}
