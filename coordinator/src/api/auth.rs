//! Who is calling the dashboard or the admin API, and what they may do.
//!
//! A caller shows a token as `Authorization: Bearer <token>` (API, CLI) or in the
//! `dtx_token` cookie (the dashboard's sign-in sets it). With no token configured, the
//! dashboard and the admin API answer loopback callers only, as admins.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode, header};

use super::error::ApiError;
use crate::config::{Config, Role};

/// The cookie the dashboard keeps the token in.
pub const COOKIE: &str = "dtx_token";

/// An identified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or `loopback` when no token is configured.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    /// Whether it may act (retry, abort, ...).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Why a caller was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or a wrong one.
    Unauthenticated,
    /// No token is configured and the caller is not on loopback.
    NotLoopback,
    /// A viewer asked to act.
    NotAdmin,
}

impl Denied {
    /// The JSON error of the admin API.
    pub fn api_error(self) -> ApiError {
        match self {
            Self::Unauthenticated => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "send a configured token as Authorization: Bearer <token>",
                None,
            ),
            Self::NotLoopback => ApiError::new(
                StatusCode::FORBIDDEN,
                "no access token is configured: the dashboard and admin API answer loopback callers only",
                None,
            ),
            Self::NotAdmin => ApiError::new(
                StatusCode::FORBIDDEN,
                "this action needs an admin token; yours is a viewer token",
                None,
            ),
        }
    }
}

/// The token a request carries, from the `Authorization` header or the cookie.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Compares without stopping at the first difference (the time taken says nothing about
/// how much of a guess was right).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Identifies the caller of a request from `peer`.
pub fn identify(config: &Config, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, Denied> {
    if config.tokens.is_empty() {
        return if peer.ip().is_loopback() {
            Ok(Caller {
                name: "loopback".into(),
                role: Role::Admin,
            })
        } else {
            Err(Denied::NotLoopback)
        };
    }
    let given = presented(headers).ok_or(Denied::Unauthenticated)?;
    config
        .tokens
        .iter()
        .find(|t| same(&t.token, given))
        .map(|t| Caller {
            name: t.name.clone(),
            role: t.role,
        })
        .ok_or(Denied::Unauthenticated)
}

/// Identifies the caller and requires the admin role.
pub fn admin(config: &Config, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, Denied> {
    let caller = identify(config, headers, peer)?;
    if caller.is_admin() {
        Ok(caller)
    } else {
        Err(Denied::NotAdmin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessToken;

    fn config() -> Config {
        Config {
            tokens: vec![
                AccessToken {
                    name: "alice".into(),
                    token: "a-secret".into(),
                    role: Role::Admin,
                },
                AccessToken {
                    name: "bob".into(),
                    token: "b-secret".into(),
                    role: Role::Viewer,
                },
            ],
            ..Config::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn roles_come_from_the_token() {
        let c = config();
        let far: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let alice = identify(&c, &headers(&[("authorization", "Bearer a-secret")]), far).unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Admin));
        let bob = headers(&[("cookie", "x=1; dtx_token=b-secret")]);
        assert_eq!(identify(&c, &bob, far).unwrap().role, Role::Viewer);
        assert_eq!(admin(&c, &bob, far), Err(Denied::NotAdmin));
        assert_eq!(
            identify(&c, &headers(&[("authorization", "Bearer a-secreT")]), far),
            Err(Denied::Unauthenticated)
        );
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            identify(&c, &HeaderMap::new(), local),
            Err(Denied::Unauthenticated),
            "with tokens configured, loopback needs one too"
        );
    }

    #[test]
    fn without_tokens_only_loopback() {
        let c = Config::default();
        let local: SocketAddr = "[::1]:5000".parse().unwrap();
        assert!(identify(&c, &HeaderMap::new(), local).unwrap().is_admin());
        let far: SocketAddr = "192.168.0.9:5000".parse().unwrap();
        assert_eq!(
            identify(&c, &HeaderMap::new(), far),
            Err(Denied::NotLoopback)
        );
    }
}
