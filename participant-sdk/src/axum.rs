//! axum integration: the [`BranchContext`] extractor, [`BranchError`] responses, and
//! routers that mount a participant in one line.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;

use crate::context::BranchContext;
use crate::result::{BranchError, BranchResult};
use crate::saga::SagaParticipant;
use crate::tcc::TccParticipant;
use crate::types::Op;

/// A request without a usable branch context (400, with the reason).
#[derive(Debug)]
pub struct MissingContext(pub String);

impl IntoResponse for MissingContext {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": self.0 })),
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BranchContext {
    type Rejection = MissingContext;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .unwrap_or_else(|_| Query(HashMap::new()));
        let headers = &parts.headers;
        BranchContext::from_lookup(|name| {
            query.get(name).cloned().or_else(|| {
                let header = format!("dtx-{}", name.replace('_', "-"));
                headers
                    .get(header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
        })
        .map_err(MissingContext)
    }
}

fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, BranchError> {
    // A body the participant cannot read will not get better by retrying, but it is the
    // coordinator's (or initiator's) bug, not a business refusal: answer 5xx so that the
    // coordinator retries and, when its budget is spent, flags it for an operator.
    serde_json::from_slice(if body.is_empty() { b"null" } else { body })
        .map_err(|e| BranchError::Transient(format!("unreadable request body: {e}")))
}

fn respond(result: BranchResult) -> Response {
    match result {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "dtm_result": "SUCCESS" })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Mounts a TCC participant's ops at `/try`, `/confirm` and `/cancel`.
///
/// ```
/// # use dtx::{BranchContext, BranchResult, TccParticipant};
/// # struct Account;
/// # #[async_trait::async_trait]
/// # impl TccParticipant for Account {
/// #     type Request = serde_json::Value;
/// #     async fn try_(&self, _: &BranchContext, _: Self::Request) -> BranchResult { Ok(()) }
/// #     async fn confirm(&self, _: &BranchContext, _: Self::Request) -> BranchResult { Ok(()) }
/// #     async fn cancel(&self, _: &BranchContext, _: Self::Request) -> BranchResult { Ok(()) }
/// # }
/// let app: axum::Router = axum::Router::new().nest("/account", dtx::axum::tcc_router(Account));
/// ```
pub fn tcc_router<P: TccParticipant, S>(participant: P) -> Router<S> {
    async fn call<P: TccParticipant>(
        State(p): State<Arc<P>>,
        op: Op,
        mut ctx: BranchContext,
        body: Bytes,
    ) -> Response {
        // The route names the op: a context that says otherwise must not steer the barrier.
        ctx.op = op;
        let result = match decode::<P::Request>(&body) {
            Ok(req) => match op {
                Op::Try => p.try_(&ctx, req).await,
                Op::Confirm => p.confirm(&ctx, req).await,
                _ => p.cancel(&ctx, req).await,
            },
            Err(e) => Err(e),
        };
        respond(result)
    }
    let p = Arc::new(participant);
    Router::new()
        .route(
            "/try",
            post(|s: State<Arc<P>>, ctx: BranchContext, b: Bytes| call(s, Op::Try, ctx, b)),
        )
        .route(
            "/confirm",
            post(|s: State<Arc<P>>, ctx: BranchContext, b: Bytes| call(s, Op::Confirm, ctx, b)),
        )
        .route(
            "/cancel",
            post(|s: State<Arc<P>>, ctx: BranchContext, b: Bytes| call(s, Op::Cancel, ctx, b)),
        )
        .with_state(p)
}

/// Mounts a saga step's ops at `/action` and `/compensate`.
///
/// ```
/// # use dtx::{BranchContext, BranchResult, SagaParticipant};
/// # struct Stock;
/// # #[async_trait::async_trait]
/// # impl SagaParticipant for Stock {
/// #     type Request = serde_json::Value;
/// #     async fn action(&self, _: &BranchContext, _: Self::Request) -> BranchResult { Ok(()) }
/// #     async fn compensate(&self, _: &BranchContext, _: Self::Request) -> BranchResult { Ok(()) }
/// # }
/// let app: axum::Router = axum::Router::new().nest("/stock", dtx::axum::saga_router(Stock));
/// ```
pub fn saga_router<P: SagaParticipant, S>(participant: P) -> Router<S> {
    async fn call<P: SagaParticipant>(
        State(p): State<Arc<P>>,
        op: Op,
        mut ctx: BranchContext,
        body: Bytes,
    ) -> Response {
        ctx.op = op;
        let result = match decode::<P::Request>(&body) {
            Ok(req) if op == Op::Action => p.action(&ctx, req).await,
            Ok(req) => p.compensate(&ctx, req).await,
            Err(e) => Err(e),
        };
        respond(result)
    }
    let p = Arc::new(participant);
    Router::new()
        .route(
            "/action",
            post(|s: State<Arc<P>>, ctx: BranchContext, b: Bytes| call(s, Op::Action, ctx, b)),
        )
        .route(
            "/compensate",
            post(|s: State<Arc<P>>, ctx: BranchContext, b: Bytes| call(s, Op::Compensate, ctx, b)),
        )
        .with_state(p)
}

/// The handler of a half message's check-back (DESIGN §5): mount it at the URL given as
/// `query_prepared`. It answers SUCCESS when the initiator's local transaction committed
/// (the message is delivered) and FAILURE when it rolled back or never ran (the message
/// fails); it waits while that transaction is still open.
///
/// ```no_run
/// # async fn demo(pool: sqlx::SqlitePool) {
/// let app: axum::Router = axum::Router::new()
///     .route("/orders/query_prepared", dtx::axum::query_prepared(pool));
/// # }
/// ```
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub fn query_prepared<DB, S>(pool: sqlx::Pool<DB>) -> axum::routing::MethodRouter<S>
where
    DB: crate::barrier::BarrierBackend,
    S: Clone + Send + Sync + 'static,
{
    let handler = move |ctx: BranchContext| {
        let pool = pool.clone();
        async move {
            respond(
                match crate::barrier::query_prepared(&pool, &ctx.gid).await {
                    Ok(crate::barrier::Prepared::Committed) => Ok(()),
                    Ok(crate::barrier::Prepared::RolledBack) => Err(crate::BranchError::failure(
                        "the initiator's local transaction rolled back",
                    )),
                    Err(e) => Err(crate::BranchError::transient(e.to_string())),
                },
            )
        }
    };
    axum::routing::get(handler.clone()).post(handler)
}

/// Mounts the phase 2 of XA branches prepared with [`crate::xa::postgres::prepare`] at
/// `/phase2` (the coordinator calls it with `op=commit` or `op=rollback`); register the
/// branch with that URL.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) {
/// let app: axum::Router = axum::Router::new().nest("/bank", dtx::axum::xa_postgres_router(pool));
/// # }
/// ```
#[cfg(feature = "postgres")]
pub fn xa_postgres_router<S: Clone + Send + Sync + 'static>(pool: sqlx::PgPool) -> Router<S> {
    let handler = |State(pool): State<sqlx::PgPool>, ctx: BranchContext| async move {
        respond(crate::xa::postgres::phase2(&pool, &ctx).await)
    };
    Router::new()
        .route("/phase2", post(handler).get(handler))
        .with_state(pool)
}

/// Mounts the phase 2 of XA branches prepared with [`crate::xa::mysql::prepare`] at
/// `/phase2`, as [`xa_postgres_router`] does for PostgreSQL.
#[cfg(feature = "mysql")]
pub fn xa_mysql_router<S: Clone + Send + Sync + 'static>(pool: sqlx::MySqlPool) -> Router<S> {
    let handler = |State(pool): State<sqlx::MySqlPool>, ctx: BranchContext| async move {
        respond(crate::xa::mysql::phase2(&pool, &ctx).await)
    };
    Router::new()
        .route("/phase2", post(handler).get(handler))
        .with_state(pool)
}
