//! kiln: an ahead-of-time compiled inference engine and HTTP server for Qwen3.5-4B.
//!
//! Dependency rule: server -> scheduler -> backend -> kernels; `config`, `checkpoint`,
//! `plan` and `tokenizer` are leaves.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod generate;
pub mod plan;
pub mod tokenizer;
pub mod sampling;
pub mod scheduler;
pub mod server;
