//! What a participant answers, and how it maps to the wire (DESIGN §4).

/// The answer of a branch op that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BranchError {
    /// A business refusal (HTTP 409): phase 1 rolls the transaction back; in phase 2 the
    /// coordinator flags it for an operator.
    #[error("refused: {0}")]
    Failure(String),
    /// Not finished yet (HTTP 425): the coordinator asks again after its retry interval.
    #[error("ongoing")]
    Ongoing,
    /// Anything else (HTTP 500): the coordinator retries with backoff.
    #[error("transient: {0}")]
    Transient(String),
}

impl BranchError {
    /// A business refusal.
    pub fn failure(reason: impl Into<String>) -> Self {
        Self::Failure(reason.into())
    }

    /// A transient error: retried by the coordinator.
    pub fn transient(reason: impl std::fmt::Display) -> Self {
        Self::Transient(reason.to_string())
    }

    /// The HTTP status the coordinator expects for this answer.
    ///
    /// ```
    /// use dtx::BranchError;
    /// assert_eq!(BranchError::failure("no stock").http_status(), 409);
    /// assert_eq!(BranchError::Ongoing.http_status(), 425);
    /// assert_eq!(BranchError::transient("db down").http_status(), 500);
    /// ```
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Failure(_) => 409,
            Self::Ongoing => 425,
            Self::Transient(_) => 500,
        }
    }
}

/// A database error inside a branch op is transient: the coordinator retries.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
impl From<sqlx::Error> for BranchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Transient(e.to_string())
    }
}

/// The result of a branch op: `Ok(())` is SUCCESS (HTTP 200).
pub type BranchResult = Result<(), BranchError>;

#[cfg(feature = "axum")]
mod http {
    use axum::Json;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};

    use super::BranchError;

    impl IntoResponse for BranchError {
        fn into_response(self) -> Response {
            let status = StatusCode::from_u16(self.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // DTM's SDKs also look for these words; dtx classifies by status alone.
            let body = match self {
                BranchError::Failure(_) => {
                    serde_json::json!({ "dtm_result": "FAILURE", "error": self.to_string() })
                }
                BranchError::Ongoing => serde_json::json!({ "dtm_result": "ONGOING" }),
                BranchError::Transient(_) => serde_json::json!({ "error": self.to_string() }),
            };
            (status, Json(body)).into_response()
        }
    }
}
