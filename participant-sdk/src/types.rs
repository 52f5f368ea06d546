//! Domain types shared by the coordinator and its clients: transaction modes, statuses and
//! branch ops, each with one spelling (`Display`/`FromStr`/serde) used by every layer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Raised when a string is not one of the known spellings of a domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct ParseError {
    /// Which domain type was being parsed (`trans_type`, `status`, `op`).
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The canonical spelling, as stored and as sent on the native API.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(ParseError { kind: $kind, value: s.to_owned() }),
                }
            }
        }
    };
}

string_enum!(
    /// The mode of a global transaction.
    TransType, "trans_type", {
        /// Orchestrated saga: actions in order (or as a DAG), compensations on failure.
        Saga => "saga",
        /// Try-confirm-cancel: the initiator runs the tries, the coordinator phase 2.
        Tcc => "tcc",
        /// Two-phase commit over participants' XA / prepared transactions.
        Xa => "xa",
        /// Two-phase ("half") message.
        Msg => "msg",
    }
);

string_enum!(
    /// The status of a global transaction. `Succeeded` and `Failed` are final.
    GlobalStatus, "status", {
        /// Created; the initiator is still registering branches (TCC, XA, msg).
        Prepared => "prepared",
        /// Committed by the initiator; the coordinator drives the forward ops.
        Submitted => "submitted",
        /// Rolling back: compensations / cancels / rollbacks are being driven.
        Aborting => "aborting",
        /// Final: every forward op succeeded.
        Succeeded => "succeeded",
        /// Final: rolled back completely.
        Failed => "failed",
    }
);

impl GlobalStatus {
    /// Whether no further change can happen.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// DTM's spelling of the status, used only at the DTM-compatible API edge.
    pub const fn dtm_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeed",
            other => other.as_str(),
        }
    }
}

string_enum!(
    /// The status of one branch op.
    OpStatus, "op status", {
        /// Not yet done (never called, or the last call was transient / ongoing).
        Pending => "pending",
        /// The participant answered SUCCESS.
        Succeeded => "succeeded",
        /// The participant answered FAILURE.
        Failed => "failed",
    }
);

impl OpStatus {
    /// DTM's spelling (`prepared`, `succeed`, `failed`), used at the DTM-compatible edge.
    pub const fn dtm_str(self) -> &'static str {
        match self {
            Self::Pending => "prepared",
            Self::Succeeded => "succeed",
            Self::Failed => "failed",
        }
    }
}

string_enum!(
    /// An operation of a branch, as named by DESIGN §2.
    Op, "op", {
        /// Saga / XA / msg forward op.
        Action => "action",
        /// Saga undo op.
        Compensate => "compensate",
        /// TCC phase 1 (called by the initiator, never by the coordinator).
        Try => "try",
        /// TCC phase 2, commit.
        Confirm => "confirm",
        /// TCC phase 2, rollback.
        Cancel => "cancel",
        /// XA phase 2, commit.
        Commit => "commit",
        /// XA phase 2, rollback.
        Rollback => "rollback",
        /// The half-message check-back pseudo op.
        Msg => "msg",
    }
);

impl Op {
    /// Whether the op undoes another one (`cancel`, `compensate`, `rollback`).
    pub const fn is_compensating(self) -> bool {
        matches!(self, Self::Cancel | Self::Compensate | Self::Rollback)
    }

    /// Whether the op carries out a decision already taken (`compensate`, `confirm`,
    /// `cancel`, `commit`, `rollback`): it must succeed in the end, so a FAILURE answer is
    /// an error for an operator rather than a decision.
    pub const fn is_phase_two(self) -> bool {
        matches!(
            self,
            Self::Compensate | Self::Confirm | Self::Cancel | Self::Commit | Self::Rollback
        )
    }

    /// The op that a compensating op undoes (`cancel` → `try`, `compensate` → `action`,
    /// `rollback` → `action`), `None` for forward ops.
    pub const fn undoes(self) -> Option<Op> {
        match self {
            Self::Cancel => Some(Self::Try),
            Self::Compensate | Self::Rollback => Some(Self::Action),
            _ => None,
        }
    }
}

/// Longest accepted gid, in bytes.
pub const MAX_GID_LEN: usize = 128;

/// Checks a gid against DESIGN §2: 1 to 128 bytes of `[A-Za-z0-9._:-]`.
///
/// ```
/// assert!(dtx::validate_gid("order-42:pay").is_ok());
/// assert!(dtx::validate_gid("has space").is_err());
/// ```
pub fn validate_gid(gid: &str) -> Result<(), String> {
    if gid.is_empty() {
        return Err("gid must not be empty".into());
    }
    if gid.len() > MAX_GID_LEN {
        return Err(format!(
            "gid is {} bytes long; at most {MAX_GID_LEN} are allowed",
            gid.len()
        ));
    }
    if let Some(c) = gid
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "gid contains {c:?}; only A-Z a-z 0-9 . _ : - are allowed"
        ));
    }
    Ok(())
}

/// Longest accepted branch id, in bytes.
pub const MAX_BRANCH_ID_LEN: usize = 64;

/// Checks a branch id: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub fn validate_branch_id(branch_id: &str) -> Result<(), String> {
    if branch_id.is_empty() || branch_id.len() > MAX_BRANCH_ID_LEN {
        return Err(format!(
            "branch_id must be 1 to {MAX_BRANCH_ID_LEN} bytes long"
        ));
    }
    if !branch_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("branch_id may contain only A-Z a-z 0-9 . _ -".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in ["prepared", "submitted", "aborting", "succeeded", "failed"] {
            assert_eq!(s.parse::<GlobalStatus>().unwrap().as_str(), s);
        }
        for s in [
            "action",
            "compensate",
            "try",
            "confirm",
            "cancel",
            "commit",
            "rollback",
            "msg",
        ] {
            assert_eq!(s.parse::<Op>().unwrap().to_string(), s);
        }
        assert_eq!(GlobalStatus::Succeeded.dtm_str(), "succeed");
        assert_eq!(
            serde_json::to_string(&TransType::Tcc).unwrap(),
            "\"tcc\"",
            "serde and Display must agree"
        );
        assert!("succeed".parse::<GlobalStatus>().is_err());
    }

    #[test]
    fn gid_rules() {
        assert!(validate_gid(&"a".repeat(128)).is_ok());
        assert!(validate_gid(&"a".repeat(129)).is_err());
        assert!(validate_gid("").is_err());
        assert!(validate_gid("a/b").is_err());
        assert!(validate_gid("0193a1b2-7c3d.x_y:z").is_ok());
    }

    #[test]
    fn compensation_pairs() {
        assert_eq!(Op::Cancel.undoes(), Some(Op::Try));
        assert_eq!(Op::Compensate.undoes(), Some(Op::Action));
        assert_eq!(Op::Confirm.undoes(), None);
        assert!(Op::Rollback.is_compensating());
    }
}
