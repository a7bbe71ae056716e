//! Which proxy, if any, a URL goes through: the `proxy` key, else `HTTPS_PROXY`/`https_proxy`
//! (`ALL_PROXY`) honouring `NO_PROXY`. The same decision serves the ticket request and the
//! WebSocket, so both always take the same path. Credentials never reach a log line.

use crate::config::ProxyUrl;

/// The proxy chosen for a target, with its `NO_PROXY` exceptions already applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyChoice(pub ProxyUrl);

/// The environment's proxy settings, read once at start (and on reload).
#[derive(Clone, Debug, Default)]
pub struct ProxySettings {
    configured: Option<ProxyUrl>,
    env: Option<ProxyUrl>,
    no_proxy: Vec<String>,
}

impl ProxySettings {
    /// Reads `HTTPS_PROXY`, `https_proxy`, `ALL_PROXY`, `all_proxy`, `NO_PROXY`, `no_proxy`.
    pub fn from_env(configured: Option<ProxyUrl>) -> ProxySettings {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        let env = var(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]).and_then(|v| {
            let v = if v.contains("://") {
                v
            } else {
                format!("http://{v}")
            };
            match reqwest::Url::parse(&v) {
                Ok(u) if u.scheme() == "http" => Some(ProxyUrl(u)),
                _ => {
                    tracing::warn!(
                        "ignoring HTTPS_PROXY/ALL_PROXY: only http:// CONNECT proxies are supported"
                    );
                    None
                }
            }
        });
        let no_proxy = var(&["NO_PROXY", "no_proxy"])
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        ProxySettings {
            configured,
            env,
            no_proxy,
        }
    }

    /// The proxy for `host`, or `None` to connect directly.
    pub fn for_host(&self, host: &str) -> Option<ProxyChoice> {
        let proxy = self.configured.as_ref().or(self.env.as_ref())?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let excluded = self
            .no_proxy
            .iter()
            .any(|p| p == "*" || host == *p || host.ends_with(&format!(".{p}")));
        (!excluded).then(|| ProxyChoice(proxy.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ProxyUrl {
        ProxyUrl(reqwest::Url::parse(s).unwrap())
    }

    #[test]
    fn no_proxy_matches_suffixes() {
        let s = ProxySettings {
            configured: Some(url("http://u:p@proxy:3128")),
            env: None,
            no_proxy: vec!["dingtalk.com".into(), "127.0.0.1".into()],
        };
        assert!(s.for_host("api.dingtalk.com").is_none());
        assert!(s.for_host("127.0.0.1").is_none());
        assert!(s.for_host("example.org").is_some());
        assert!(!format!("{:?}", s.for_host("example.org")).contains(":p@"));
    }

    #[test]
    fn configured_wins_over_env() {
        let s = ProxySettings {
            configured: Some(url("http://a:1")),
            env: Some(url("http://b:2")),
            no_proxy: vec![],
        };
        assert_eq!(s.for_host("x").unwrap().0, url("http://a:1"));
    }
}
