//! The access-token cache behind `POST /v1.0/oauth2/accessToken`: local apps present the
//! local credentials, the daemon asks DingTalk with the real ones (the same request shape),
//! and every local app shares the one token until it is due for renewal: within
//! [`RENEW_BEFORE`] of its expiry (half its lifetime for short-lived tokens). Renewal is single
//! flight (one request to DingTalk however many apps ask at once); a failed renewal keeps
//! serving the old token while it is valid. A reload that changes the upstream (credentials,
//! endpoint) drops the cached token. The token is never logged.

use super::upstream::Upstream;
use crate::secret::Secret;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tracing::{info, warn};

/// A token is renewed this long before it expires (DingTalk's last 5 minutes are the SDKs'
/// own margin: the Python SDK reuses a token until `expireIn - 300`).
pub const RENEW_BEFORE: Duration = Duration::from_secs(600);
/// Bytes of an answer read at most.
const MAX_BODY: usize = 64 * 1024;

struct Cached {
    token: Secret,
    expires: Instant,
    lifetime: Duration,
    /// The upstream it was issued for: a reload that replaced it makes it stale.
    from: Arc<Upstream>,
}

impl Cached {
    fn left(&self, now: Instant) -> Duration {
        self.expires.saturating_duration_since(now)
    }

    fn due(&self, now: Instant) -> bool {
        self.left(now) <= RENEW_BEFORE.min(self.lifetime / 2)
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// DingTalk answered with an error (its `code` and `message`).
    #[error("DingTalk answered HTTP {status} ({code}: {message})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// DingTalk's error code.
        code: String,
        /// DingTalk's message.
        message: String,
    },
    /// Network, TLS, proxy or timeout.
    #[error("the token request failed: {0}")]
    Network(String),
    /// 200 without a usable token.
    #[error("DingTalk sent an unusable token answer: {0}")]
    BadResponse(String),
}

/// The shared cache.
pub struct TokenCache {
    upstream: watch::Receiver<Arc<Upstream>>,
    cached: Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenAnswer {
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expire_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl TokenCache {
    /// A cache for whatever upstream `upstream` holds.
    pub fn new(upstream: watch::Receiver<Arc<Upstream>>) -> TokenCache {
        TokenCache {
            upstream,
            cached: Mutex::new(None),
        }
    }

    /// The token and how long it stays valid; renewed first when it is due.
    pub async fn get(&self) -> Result<(Secret, Duration), TokenError> {
        let up = self.upstream.borrow().clone();
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        if let Some(c) = cached.as_ref().filter(|c| Arc::ptr_eq(&c.from, &up))
            && !c.due(now)
        {
            return Ok((c.token.clone(), c.left(now)));
        }
        match fetch(&up).await {
            Ok((token, lifetime)) => {
                info!(expires_in = ?lifetime, "DingTalk access token obtained for the local apps");
                let now = Instant::now();
                *cached = Some(Cached {
                    token: token.clone(),
                    expires: now + lifetime,
                    lifetime,
                    from: up,
                });
                Ok((token, lifetime))
            }
            Err(e) => match cached.as_ref().filter(|c| Arc::ptr_eq(&c.from, &up)) {
                Some(c) if !c.left(now).is_zero() => {
                    warn!(error = %e, left = ?c.left(now), "cannot renew the access token; serving the current one until it expires");
                    Ok((c.token.clone(), c.left(now)))
                }
                _ => Err(e),
            },
        }
    }
}

/// `POST <origin>/v1.0/oauth2/accessToken` with the real credentials.
async fn fetch(up: &Upstream) -> Result<(Secret, Duration), TokenError> {
    let url = up
        .url("/v1.0/oauth2/accessToken")
        .map_err(TokenError::BadResponse)?;
    let body = serde_json::json!({"appKey": up.client_id, "appSecret": up.secret.expose()});
    let mut resp = up
        .http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(up.timeout)
        .json(&body)
        .send()
        .await
        .map_err(|e| TokenError::Network(describe(&e)))?;
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| TokenError::Network(describe(&e)))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_BODY {
            return Err(TokenError::BadResponse("answer too large".into()));
        }
    }
    if status != 200 {
        let e: ErrorAnswer = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(TokenError::Refused {
            status,
            code: e.code,
            message: e.message,
        });
    }
    let a: TokenAnswer = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::BadResponse(format!("not the expected JSON: {e}")))?;
    let expire_in = a
        .expire_in
        .filter(|s| *s > 0)
        .ok_or_else(|| TokenError::BadResponse("no expireIn".into()))?;
    if a.access_token.is_empty() {
        return Err(TokenError::BadResponse("no accessToken".into()));
    }
    Ok((Secret::new(a.access_token), Duration::from_secs(expire_in)))
}

/// The error chain without the URL.
pub(super) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut parts = crate::gateway::http::causes(e);
    if parts.is_empty() {
        parts.push("HTTP error".into());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(lifetime: u64) -> (Cached, Instant) {
        let now = Instant::now();
        let tls = crate::gateway::tls::client_config(None, &[]).unwrap();
        let y = "dingtalk:\n  client_id: a\n  client_secret: b\n";
        let c = crate::config::Config::parse(y, std::path::Path::new("t")).unwrap();
        let up = Upstream::new(&c, Secret::new("b"), tls, &Default::default()).unwrap();
        let lifetime = Duration::from_secs(lifetime);
        let c = Cached {
            token: Secret::new("t"),
            expires: now + lifetime,
            lifetime,
            from: Arc::new(up),
        };
        (c, now)
    }

    #[test]
    fn renewal_is_due_near_the_end() {
        let (c, now) = cached(7200);
        assert!(!c.due(now));
        assert!(!c.due(now + Duration::from_secs(7200 - 601)));
        assert!(c.due(now + Duration::from_secs(7200 - 600)));
        let (short, now) = cached(60);
        assert!(!short.due(now + Duration::from_secs(29)));
        assert!(short.due(now + Duration::from_secs(30)));
        assert_eq!(short.left(now + Duration::from_secs(90)), Duration::ZERO);
    }
}
