//! What every HTTP client of the daemon shares (the ticket request, the compat endpoint's
//! token and OpenAPI forwarding, webhook sinks): our trust store, the proxy decision of
//! [`ProxySettings`] per request host (never reqwest's own environment lookup), our
//! User-Agent; and error text that never includes a URL.

use super::proxy::ProxySettings;
use super::ticket::USER_AGENT;

/// A client builder with our TLS configuration, our proxy decision and User-Agent; callers
/// add their timeouts and redirect policy.
pub fn client_builder(
    tls: &rustls::ClientConfig,
    proxies: &ProxySettings,
) -> reqwest::ClientBuilder {
    let proxies = proxies.clone();
    let proxy = reqwest::Proxy::custom(move |url| {
        url.host_str()
            .and_then(|h| proxies.for_host(h))
            .map(|p| p.0.0.clone())
    });
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .no_proxy()
        .proxy(proxy)
        .user_agent(USER_AGENT)
}

/// The texts of `e`'s causes, outermost first (not `e` itself: a reqwest error's own text
/// names the URL, which may carry a token or a proxy's credentials).
pub fn causes(e: &dyn std::error::Error) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    parts
}
