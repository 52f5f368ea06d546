//! The branch context: which global transaction, branch and op a call is about.

use crate::types::{Op, TransType};

/// Where a participant call belongs: sent by the coordinator as query parameters
/// (`gid`, `trans_type`, `branch_id`, `op`, DTM-compatible) and as `dtx-*` headers.
///
/// With the `axum` feature it is an extractor:
///
/// ```
/// # #[cfg(feature = "axum")] {
/// async fn reserve(ctx: dtx::BranchContext) -> String {
///     format!("{} branch {} op {}", ctx.gid, ctx.branch_id, ctx.op)
/// }
/// let app: axum::Router = axum::Router::new().route("/reserve", axum::routing::post(reserve));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BranchContext {
    /// Global transaction id.
    pub gid: String,
    /// Mode of the global transaction.
    pub trans_type: TransType,
    /// Branch id.
    pub branch_id: String,
    /// The op being called.
    pub op: Op,
}

impl BranchContext {
    /// A context, e.g. for calling the barrier outside an HTTP handler.
    ///
    /// ```
    /// use dtx::{BranchContext, Op, TransType};
    /// let ctx = BranchContext::new("order-42", TransType::Tcc, "01", Op::Try);
    /// assert_eq!(ctx.op, Op::Try);
    /// ```
    pub fn new(
        gid: impl Into<String>,
        trans_type: TransType,
        branch_id: impl Into<String>,
        op: Op,
    ) -> Self {
        Self {
            gid: gid.into(),
            trans_type,
            branch_id: branch_id.into(),
            op,
        }
    }

    /// Builds a context from a lookup of named values (query parameters first, then
    /// `dtx-*` headers); the error names what is missing or malformed.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let field = |name: &str| -> Result<String, String> {
            get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!(
                    "missing `{name}` (query parameter or dtx-{} header)",
                    name.replace('_', "-")
                )
            })
        };
        let gid = field("gid")?;
        crate::types::validate_gid(&gid).map_err(|e| format!("gid: {e}"))?;
        let trans_type = field("trans_type")?
            .parse()
            .map_err(|e| format!("trans_type: {e}"))?;
        let branch_id = field("branch_id")?;
        crate::types::validate_branch_id(&branch_id).map_err(|e| format!("branch_id: {e}"))?;
        let op = field("op")?.parse().map_err(|e| format!("op: {e}"))?;
        Ok(Self {
            gid,
            trans_type,
            branch_id,
            op,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn lookup_names_what_is_missing() {
        let mut m: HashMap<&str, &str> =
            HashMap::from([("gid", "g1"), ("trans_type", "saga"), ("branch_id", "01")]);
        let parse = |m: &HashMap<&str, &str>| {
            BranchContext::from_lookup(|k| m.get(k).map(|v| v.to_string()))
        };
        assert!(parse(&m).unwrap_err().contains("`op`"));
        m.insert("op", "action");
        assert_eq!(parse(&m).unwrap().op, Op::Action);
        m.insert("op", "launch");
        assert!(parse(&m).unwrap_err().starts_with("op:"));
    }
}
