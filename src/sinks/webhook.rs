//! A webhook sink: each line of its group (whose topic it takes) is POSTed as it is, with
//! `Content-Type: application/json` and, with a `secret_file`, `X-Dingtalk-Streamd-Signature:
//! sha256=<hex HMAC-SHA256 of the body>`; one request at a time, in seq order. A 2xx answer
//! confirms it; anything else, or no answer within `timeout`, is retried with the reconnect
//! backoff, honouring `Retry-After`. Errors never show the URL's query (it may hold a token).

use super::feed::{Feed, Line};
use super::subject::{Fields, topic_matches};
use super::{Retry, SinkState, WEBHOOK_WINDOW, group_name};
use crate::config::WebhookSink;
use crate::consumers::groups::GroupRegistry;
use crate::gateway::proxy::ProxySettings;
use crate::secret::Secret;
use crate::supervisor::backoff::Backoff;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Dingtalk-Streamd-Signature";
/// A `Retry-After` longer than this is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Bytes of an error answer shown in status and the log.
const SNIPPET: usize = 120;

/// A webhook sink, ready to run.
pub(super) struct Webhook {
    pub name: String,
    pub cfg: WebhookSink,
    pub secret: Option<Secret>,
    pub client: reqwest::Client,
    pub retry: Retry,
    pub state: Arc<SinkState>,
}

/// Why a POST did not count.
struct Failure {
    what: String,
    retry_after: Option<Duration>,
}

/// The HTTP client of one webhook: our trust store, the proxy decision of the ticket request,
/// the webhook's timeout.
pub(super) fn client(
    w: &WebhookSink,
    tls: &Arc<rustls::ClientConfig>,
    proxies: &ProxySettings,
) -> Result<reqwest::Client, String> {
    crate::gateway::http::client_builder(tls, proxies)
        .connect_timeout(w.timeout.get())
        .timeout(w.timeout.get())
        // A redirect is a failure: a 301/302/303 would turn the POST into a GET without the
        // message (and a 2xx to that would count as delivered), a 307/308 would post the
        // message, bearer URLs included, wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))
}

impl Webhook {
    /// Posts what the group gives until `shutdown`.
    pub async fn run(self, groups: GroupRegistry, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.retry.initial, self.retry.max);
        let group = group_name(&self.name);
        let Some(mut feed) =
            Feed::join(&groups, &group, WEBHOOK_WINDOW, backoff.clone(), &shutdown).await
        else {
            return;
        };
        // Nothing failed yet.
        self.state.connected.store(true, Ordering::Relaxed);
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => return,
                l = feed.recv() => match l {
                    Some(l) => l,
                    None => return,
                },
            };
            if !self.wanted(&line) {
                feed.ack(line.seq);
                continue;
            }
            loop {
                let posted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.post(&line) => r,
                };
                match posted {
                    Ok(()) => {
                        self.state.published.fetch_add(1, Ordering::Relaxed);
                        self.state.connected.store(true, Ordering::Relaxed);
                        if backoff.failures() > 0 {
                            info!(sink = %self.name, url = %self.cfg.shown_url(), seq = line.seq, "webhook accepts requests again");
                            backoff.reset();
                        }
                        feed.ack(line.seq);
                        break;
                    }
                    Err(f) => {
                        let jittered = backoff.next_delay(None, &mut rand::rng());
                        let wait = f.retry_after.map_or(jittered, |ra| ra.max(jittered));
                        warn!(sink = %self.name, url = %self.cfg.shown_url(), seq = line.seq, error = %f.what, retry_in = ?wait, "webhook request failed; retrying (later messages wait)");
                        self.state.connected.store(false, Ordering::Relaxed);
                        self.state.failed(format!("seq {}: {}", line.seq, f.what));
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
    }

    /// Whether the webhook takes this line's topic (an unreadable line is posted: the
    /// receiver decides).
    fn wanted(&self, line: &Line) -> bool {
        if self.cfg.topics.iter().any(|t| t == "*") {
            return true;
        }
        Fields::parse(&line.text).map_or(true, |f| topic_matches(&self.cfg.topics, &f))
    }

    /// One POST of the line.
    async fn post(&self, line: &Line) -> Result<(), Failure> {
        let body = line.text.to_string();
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, body.as_bytes()));
        }
        let resp = req.body(body).send().await.map_err(|e| Failure {
            what: if e.is_timeout() {
                format!("no answer within {}", self.cfg.timeout)
            } else {
                describe(e)
            },
            retry_after: None,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(crate::config::shown_url)
                .unwrap_or_default();
            return Err(Failure {
                what: format!(
                    "HTTP {}: a redirect (to {to:?}), not followed: set the final URL",
                    status.as_u16()
                ),
                retry_after,
            });
        }
        // The start of the answer, for the error; never more than a few KiB read.
        let mut resp = resp;
        let mut head = Vec::new();
        while head.len() < 4096 {
            match resp.chunk().await {
                Ok(Some(c)) => head.extend_from_slice(&c[..c.len().min(4096 - head.len())]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&head);
        let snippet: String = text.chars().take(SNIPPET).collect();
        Err(Failure {
            what: format!("HTTP {}: {}", status.as_u16(), snippet.trim()),
            retry_after,
        })
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in mac.finalize().into_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A `Retry-After` value (seconds, or an HTTP date) as a wait from `now`, at most
/// [`MAX_RETRY_AFTER`].
fn retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The error chain without the URL (its query may carry a token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    parts.extend(crate::gateway::http::causes(&e));
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        let s = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
    }
}
