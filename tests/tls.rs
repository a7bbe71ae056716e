//! TLS is always verified: a gateway whose certificate is outside the trusted roots is never
//! talked to (not even the ticket request), `tls.ca_file` adds its root, no setting turns
//! verification off, and plain `http://` is accepted only for loopback.

mod common;

use common::*;
use dingtalk_streamd::config::Config;
use nix::sys::signal::Signal;
use std::path::Path;

#[tokio::test]
async fn a_gateway_outside_the_trusted_roots_is_refused_and_ca_file_adds_its_root() {
    let gw = gateway(true).await;
    let p = Paths::new();
    let yaml = config_yaml(&gw, &p, "");
    let ca = format!("tls:\n  ca_file: {}\n", p.path("ca.pem").display());
    assert!(yaml.contains(&ca), "{yaml}");

    // The system roots only: the fake gateway's self-made CA is not among them.
    p.write_config(&yaml.replace(&ca, ""));
    let mut d = start_run(&p, &[]).await;
    let mut from = 0;
    for _ in 0..2 {
        let line = d
            .wait_line(&mut from, "connection attempt failed; backing off", WAIT)
            .await;
        assert!(
            line.text.contains("certificate") || line.text.contains("UnknownIssuer"),
            "{}",
            line.text
        );
    }
    assert!(
        gw.ticket_requests().is_empty(),
        "a request reached an unverified server"
    );
    assert!(gw.open_connections().is_empty());
    let st = status(&p.control).await;
    assert_ne!(st["state"], "connected", "{st}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.stderr());

    // With its CA added: connected.
    p.write_config(&yaml);
    let mut d = start_run(&p, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    push_acked(&gw, 1, "verified").await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.stderr());
}

#[test]
fn no_setting_turns_verification_off_and_plain_http_is_for_loopback_only() {
    let head = "dingtalk:\n  client_id: a\n  client_secret: s\n";
    let f = Path::new("/etc/x.yml");
    for switch in [
        "insecure: true",
        "verify: false",
        "danger_accept_invalid_certs: true",
        "skip_verify: true",
    ] {
        let e = Config::parse(&format!("{head}tls:\n  {switch}\n"), f)
            .err()
            .unwrap_or_else(|| panic!("{switch} accepted"))
            .to_string();
        assert!(e.contains("unknown field"), "{switch}: {e}");
    }
    for url in [
        "http://api.dingtalk.com/v1.0/gateway/connections/open",
        "http://10.0.0.1/v1.0/gateway/connections/open",
    ] {
        let e = Config::parse(&format!("{head}  open_url: {url}\n"), f)
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"))
            .to_string();
        assert!(e.contains("only for loopback"), "{url}: {e}");
    }
    for url in [
        "http://127.0.0.1:8080/v1.0/gateway/connections/open",
        "http://[::1]:8080/v1.0/gateway/connections/open",
        "https://api.dingtalk.com/v1.0/gateway/connections/open",
    ] {
        Config::parse(&format!("{head}  open_url: {url}\n"), f)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}
