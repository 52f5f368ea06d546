//! Calling participants. Only HTTP for now; the answer is classified per DESIGN §4 by
//! status code alone, never by words in the body.

pub mod http;

pub use http::HttpInvoker;
