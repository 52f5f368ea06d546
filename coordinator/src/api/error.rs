//! Errors as JSON answers, and extractors whose rejections are JSON answers too.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use dtx::api::ErrorBody;
use serde::de::DeserializeOwned;
use tracing::error;

use crate::service::ServiceError;

/// An error answer: a status and a JSON body naming the problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// DTM clients look for `dtm_result: FAILURE` in refusals.
    dtm: bool,
}

impl ApiError {
    /// A 4xx/5xx with a message and optionally the field at fault.
    pub fn new(status: StatusCode, error: impl Into<String>, field: Option<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                field,
            },
            dtm: false,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What is wrong, in words.
    pub fn message(&self) -> &str {
        &self.body.error
    }

    /// Marks the answer for the DTM-compatible edge.
    pub fn dtm(mut self) -> Self {
        self.dtm = true;
        self
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid { field, message } => Self::new(
                StatusCode::BAD_REQUEST,
                format!("{field}: {message}"),
                Some(field),
            ),
            ServiceError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, e.to_string(), Some("gid".into()))
            }
            ServiceError::Conflict(m) => Self::new(StatusCode::CONFLICT, m, None),
            ServiceError::Store(ref inner) => {
                error!(error = %inner, "store unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.dtm {
            let mut v = serde_json::to_value(&self.body).unwrap_or_default();
            if let Some(map) = v.as_object_mut() {
                map.insert("dtm_result".into(), "FAILURE".into());
            }
            (self.status, Json(v)).into_response()
        } else {
            (self.status, Json(self.body)).into_response()
        }
    }
}

/// Pulls the field name out of serde's messages (``missing field `gid` ``,
/// ``unknown field `x` ``), so that the answer names it.
fn field_of(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

/// `Json<T>` whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let text = r.body_text();
    let field = match &r {
        JsonRejection::JsonDataError(_) => field_of(&text),
        _ => None,
    };
    ApiError::new(r.status(), text, field)
}

/// Decodes an optional JSON body: empty means `T::default()`.
pub fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {text}"),
            field_of(&text),
        )
    })
}

/// `Query<T>` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                let text = r.body_text();
                let field = field_of(&text);
                Err(ApiError::new(StatusCode::BAD_REQUEST, text, field))
            }
            Err(r) => Err(ApiError::new(r.status(), r.body_text(), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn field_names_are_found_in_serde_messages() {
        assert_eq!(
            super::field_of("missing field `gid` at line 1").as_deref(),
            Some("gid")
        );
        assert_eq!(super::field_of("invalid type"), None);
    }
}
