//! What a reload changes, decided by a pure function of the old and the new config
//! ([`Plan::between`]), so every rule is unit-tested: live settings are applied at once, a
//! change of credentials or endpoint replaces the link (make-before-break), and what only a
//! restart can change is named in the log (the sockets, the spool directory, some limits, the
//! metrics address, and `sinks:`: the running sinks keep their settings, their groups stay
//! configured, until a restart).

use crate::config::Config;
use crate::secret::Secret;

/// What a reload from one config to another does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Replace the link: credentials, endpoint, subscriptions, CA or proxy changed.
    pub relink: bool,
    /// Keys that changed but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Plan {
    /// The plan for going from `old` (with `old_secret`) to `new` (with `new_secret`).
    pub fn between(old: &Config, old_secret: &Secret, new: &Config, new_secret: &Secret) -> Plan {
        let relink = old.dingtalk.client_id != new.dingtalk.client_id
            || old_secret != new_secret
            || old.dingtalk.open_url != new.dingtalk.open_url
            || old.dingtalk.subscriptions != new.dingtalk.subscriptions
            || old.tls.ca_file != new.tls.ca_file
            || old.proxy != new.proxy;
        let needs_restart = [
            (
                "socket.path",
                old.socket.path != new.socket.path || old.socket.mode != new.socket.mode,
            ),
            ("control.path", old.control.path != new.control.path),
            ("spool.dir", old.spool.dir != new.spool.dir),
            (
                "limits",
                restart_only_limits_changed(&old.limits, &new.limits),
            ),
            (
                "metrics",
                old.metrics.as_ref().map(|m| m.listen) != new.metrics.as_ref().map(|m| m.listen),
            ),
            // Sinks (and their secret files) are read once at start.
            ("sinks", old.sinks != new.sinks),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        Plan {
            relink,
            needs_restart,
        }
    }
}

/// The `limits:` keys read once at start (the others apply live: `max_frame_bytes` from the
/// next connection, `commit_stall` at once).
fn restart_only_limits_changed(o: &crate::config::Limits, n: &crate::config::Limits) -> bool {
    o.max_pending_acks != n.max_pending_acks
        || o.max_pending_bytes != n.max_pending_bytes
        || o.max_consumers != n.max_consumers
        || o.max_line_bytes != n.max_line_bytes
        || o.recent_cache_bytes != n.recent_cache_bytes
        || o.max_listener_connections != n.max_listener_connections
        || o.request_timeout != n.request_timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "dingtalk:\n  client_id: app\n  client_secret: s\n  open_url: http://127.0.0.1:9/v1.0/gateway/connections/open\n{extra}"
        );
        Config::parse(&yaml, std::path::Path::new("test.yml")).expect("valid config")
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.to_owned())
    }

    #[test]
    fn live_settings_need_neither_a_new_link_nor_a_restart() {
        let old = config("");
        let new = config(
            "keepalive:\n  ping_interval: 3s\n  pong_timeout: 1s\nreconnect:\n  max_delay: 5s\nlog:\n  level: debug\ngroups: [bot]\n",
        );
        let plan = Plan::between(&old, &secret("s"), &new, &secret("s"));
        assert_eq!(
            plan,
            Plan {
                relink: false,
                needs_restart: vec![]
            }
        );
    }

    #[test]
    fn credentials_and_endpoint_replace_the_link() {
        let old = config("");
        assert!(Plan::between(&old, &secret("s"), &old, &secret("rotated")).relink);
        let proxy = config("proxy: http://127.0.0.1:3128\n");
        assert!(Plan::between(&old, &secret("s"), &proxy, &secret("s")).relink);
        let subs = config("  subscriptions:\n    - { type: EVENT, topic: \"*\" }\n");
        assert!(Plan::between(&old, &secret("s"), &subs, &secret("s")).relink);
    }

    #[test]
    fn sinks_need_a_restart() {
        let old = config("");
        let nats = config("sinks:\n  nats:\n    url: nats://127.0.0.1:4222\n");
        let plan = Plan::between(&old, &secret("s"), &nats, &secret("s"));
        assert_eq!(
            plan,
            Plan {
                relink: false,
                needs_restart: vec!["sinks"]
            }
        );
        let other = config("sinks:\n  nats:\n    url: nats://127.0.0.1:4222\n    stream: OTHER\n");
        assert_eq!(
            Plan::between(&nats, &secret("s"), &other, &secret("s")).needs_restart,
            vec!["sinks"]
        );
        let hook = config("sinks:\n  webhooks:\n    - { url: http://127.0.0.1:8080/x }\n");
        assert_eq!(
            Plan::between(&hook, &secret("s"), &old, &secret("s")).needs_restart,
            vec!["sinks"],
            "removing them too"
        );
        assert!(
            Plan::between(&nats, &secret("s"), &nats, &secret("s"))
                .needs_restart
                .is_empty()
        );
    }

    #[test]
    fn sockets_spool_and_limits_need_a_restart() {
        let old = config("");
        let new = config(
            "socket:\n  path: /tmp/other.sock\nspool:\n  dir: /tmp/other\nlimits:\n  max_consumers: 3\nmetrics:\n  listen: 127.0.0.1:9464\n",
        );
        let plan = Plan::between(&old, &secret("s"), &new, &secret("s"));
        assert!(!plan.relink);
        assert_eq!(
            plan.needs_restart,
            vec!["socket.path", "spool.dir", "limits", "metrics"]
        );
    }
}
