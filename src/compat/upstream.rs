//! DingTalk's API as the local endpoint reaches it: the origin of `dingtalk.open_url`, the
//! real credentials, and one HTTP client with the daemon's trust store and proxy decision
//! (`gateway/`), `reconnect.connect_timeout` on connecting, and no redirects followed (the
//! reverse proxy passes them to the app). A reload replaces it (`watch`), so a rotated secret
//! or a new endpoint applies to the next request.

use crate::config::Config;
use crate::gateway::proxy::ProxySettings;
use crate::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

/// Where and as whom the endpoint talks to DingTalk.
pub struct Upstream {
    /// The client.
    pub http: reqwest::Client,
    /// `scheme://host:port` of `dingtalk.open_url`, no path.
    pub origin: reqwest::Url,
    /// The real `client_id` (AppKey).
    pub client_id: String,
    /// The real secret.
    pub secret: Secret,
    /// `reconnect.connect_timeout`: bound on connecting, and on a whole token request.
    pub timeout: Duration,
}

impl Upstream {
    /// The upstream of a config with its resolved secret.
    pub fn new(
        config: &Config,
        secret: Secret,
        tls: Arc<rustls::ClientConfig>,
        proxies: &ProxySettings,
    ) -> Result<Upstream, String> {
        let open = reqwest::Url::parse(&config.dingtalk.open_url)
            .map_err(|e| format!("dingtalk.open_url: {e}"))?;
        let mut origin = open.clone();
        origin.set_path("/");
        origin.set_query(None);
        origin.set_fragment(None);
        let timeout = config.reconnect.connect_timeout.get();
        let http = crate::gateway::http::client_builder(&tls, proxies)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Upstream {
            http,
            origin,
            client_id: config.dingtalk.client_id.clone(),
            secret,
            timeout,
        })
    }

    /// The upstream URL for a local path and query (`/v1.0/...?...`).
    pub fn url(&self, path_and_query: &str) -> Result<reqwest::Url, String> {
        self.origin
            .join(path_and_query.trim_start_matches('/'))
            .map_err(|e| format!("bad path: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_go_to_the_origin_of_open_url() {
        let y = "dingtalk:\n  client_id: a\n  client_secret: b\n  open_url: http://127.0.0.1:9/v1.0/gateway/connections/open?x=1\n";
        let c = Config::parse(y, std::path::Path::new("t.yml")).unwrap();
        let tls = crate::gateway::tls::client_config(None, &[b"http/1.1"]).unwrap();
        let u = Upstream::new(&c, Secret::new("b"), tls, &ProxySettings::default()).unwrap();
        assert_eq!(u.origin.as_str(), "http://127.0.0.1:9/");
        assert_eq!(
            u.url("/v1.0/robot/oToMessages/batchSend?a=b%20c")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/v1.0/robot/oToMessages/batchSend?a=b%20c"
        );
    }
}
