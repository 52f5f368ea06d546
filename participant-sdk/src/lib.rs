//! # dtx — the participant SDK
//!
//! What a service imports to take part in dtx global transactions.
//!
//! - [`types`]: the shared vocabulary of DESIGN §2 — [`TransType`], [`GlobalStatus`],
//!   [`OpStatus`], [`Op`] — with one spelling each, used by the coordinator too.
//! - [`api`]: the request and response bodies of the coordinator's native API.
//! - [`Client`]: an async client for that API (new gid, sagas, TCC prepare / register /
//!   submit / abort, query).
//!
//! Start with [`Client`]: submit a saga with [`Client::submit_saga`], or drive a TCC with
//! [`Client::prepare_tcc`], [`Client::register_branch`] and [`Client::submit`].

#![warn(missing_docs)]

pub mod api;
mod client;
pub mod types;

pub use client::{Client, ClientError};
pub use types::{
    GlobalStatus, MAX_GID_LEN, Op, OpStatus, ParseError, TransType, validate_branch_id,
    validate_gid,
};
