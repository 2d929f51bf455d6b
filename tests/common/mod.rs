//! Shared test helpers: the mock backend and codec, and an in-process server.
#![allow(dead_code)]

pub mod mock;
pub mod proc;
pub mod scripted;
pub mod server;
