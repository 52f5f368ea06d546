//! # dtx — the participant SDK
//!
//! What a service imports to take part in dtx global transactions. A three-minute map:
//!
//! - [`types`]: the shared vocabulary of DESIGN §2 — [`TransType`], [`GlobalStatus`],
//!   [`OpStatus`], [`Op`] — one spelling each, used by the coordinator too.
//! - [`Client`]: an async client for the coordinator's native API ([`api`] has the bodies).
//! - Initiating: [`Saga`] builds and submits a saga; [`Tcc::run`] prepares a TCC, registers
//!   and tries each branch, and submits or aborts.
//! - Participating: implement [`TccParticipant`] or [`SagaParticipant`], mount it with
//!   [`axum::tcc_router`] / [`axum::saga_router`] (feature `axum`), answer with
//!   [`BranchResult`] (SUCCESS / [`BranchError`] FAILURE, ONGOING, transient), and guard
//!   every op's database work with [`barrier::call`] (features `postgres`, `mysql`,
//!   `sqlite`), which makes ops idempotent, compensations of never-run ops no-ops, and
//!   late tries harmless.

#![warn(missing_docs)]

pub mod api;
#[cfg(feature = "axum")]
pub mod axum;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub mod barrier;
mod client;
mod context;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub mod messaging;
mod msg;
mod result;
mod saga;
mod tcc;
pub mod types;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod xa;

pub use client::{Client, ClientError};
pub use context::BranchContext;
pub use msg::{Msg, MsgError};
pub use result::{BranchError, BranchResult};
pub use saga::{Saga, SagaError, SagaParticipant};
pub use tcc::{Tcc, TccError, TccParticipant};
pub use types::{
    GlobalStatus, MAX_GID_LEN, Op, OpStatus, ParseError, TransType, validate_branch_id,
    validate_gid,
};
