//! # dtx-coordinator
//!
//! The coordinator durably stores the state machine of every global transaction and drives
//! it to a final state. A three-minute map, in reading order:
//!
//! - [`engine`]: the pure decision logic — given a transaction and its branch ops, the next
//!   status and the ops to call. One mode per file (`saga.rs`, `tcc.rs`); no IO.
//! - [`store`]: durable storage behind the [`store::Store`] trait, with SQLite and
//!   PostgreSQL backends; every driver write is a compare-and-swap fenced by the lease.
//! - [`invoke`]: calling participants over HTTP and classifying the answers (DESIGN §4).
//! - [`driver`]: the loop that joins them — load, plan, persist, call, fold in, repeat.
//! - [`service`]: the operations (submit a saga, prepare / register / submit / abort a
//!   TCC, query) shared by both APIs.
//! - [`api`]: the native `/api/v1` and the DTM-compatible `/api/dtmsvr` HTTP APIs, the
//!   admin API `/api/admin`, the dashboard at `/` and `/metrics` ([`metrics`]).
//! - [`server`]: wiring, the poller (the recovery path), shutdown; [`cli`] and
//!   [`config`] around it.
//!
//! Start reading at [`driver::Driver::drive`].

#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod driver;
pub mod engine;
pub mod invoke;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
