//! # dtx-coordinator
//!
//! engine / store / driver
pub mod engine;
