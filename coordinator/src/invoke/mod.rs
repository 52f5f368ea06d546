//! Calling participants: HTTP (the answer classified per DESIGN §4 by status code alone,
//! never by words in the body) and Kafka publishes for message steps.

pub mod http;
pub mod kafka;

pub use http::HttpInvoker;
pub use kafka::KafkaInvoker;
