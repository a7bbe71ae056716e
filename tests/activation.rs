//! What systemd hands the daemon: sockets through fake `LISTEN_FDS`
//! (tests/support/listenfds.py), matched by path, then name, then order, never rebound or
//! unlinked; and the secret from `$CREDENTIALS_DIRECTORY`.

mod common;

use common::systemd::Service;
use common::*;
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The secret from `$CREDENTIALS_DIRECTORY/client_secret` (systemd's LoadCredential=) when the
/// config names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_from_credentials_directory() {
    let gw = gateway(false).await;
    let p = Paths::new();
    let yaml: String = config_yaml(&gw, &p, "")
        .lines()
        .filter(|l| !l.contains("client_secret"))
        .map(|l| format!("{l}\n"))
        .collect();
    p.write_config(&yaml);
    let creds = p.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client_secret"), format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(
        creds.join("client_secret"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let creds_s = creds.to_str().unwrap();
    let check = ["--config", p.config.to_str().unwrap(), "check-config"];

    let out = output(&check, &[("CREDENTIALS_DIRECTORY", creds_s)]).await;
    let text = &out.stdout;
    assert!(
        out.code == Some(0) && text.contains("systemd credential"),
        "{text}"
    );
    assert!(!text.contains(SECRET));
    // The harness never passes the runner's CREDENTIALS_DIRECTORY on.
    let without = output(&check, &[]).await;
    assert_eq!(
        without.code,
        Some(78),
        "no secret anywhere is a config error"
    );

    let mut d = Service::run(&p.config, &[("CREDENTIALS_DIRECTORY", creds_s)]);
    d.ready().await;
    gw.wait_connected(1, WAIT)
        .await
        .expect("the credential's secret was accepted");
    assert!(d.stop().await.success());
    assert!(!d.log().contains(SECRET));
}

/// One socket-activation scenario: `bind` sockets at these paths (in this fd order) with these
/// names; `stream_at` / `control_at` are where the daemon must serve each role.
async fn activated(
    names: Option<&str>,
    bind: &[&str],
    stream_at: &str,
    control_at: &str,
    warn_expected: bool,
) {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "");
    let path = |n: &str| p.path(n);
    let mut args: Vec<String> = Vec::new();
    if let Some(n) = names {
        args.extend(["--names".into(), n.into()]);
    }
    args.extend(["--mode".into(), "0640".into()]);
    args.extend(bind.iter().map(|b| path(b).display().to_string()));
    args.extend([
        "--".into(),
        bin().into(),
        "--config".into(),
        p.config.display().to_string(),
        "run".into(),
    ]);
    let launcher = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    let mut all = vec![support("listenfds.py").display().to_string()];
    all.extend(args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut d = Service::spawn(Path::new(&launcher), &refs, &[]);
    d.ready().await;

    let inode = |n: &str| {
        std::fs::metadata(path(n))
            .map(|m| (m.ino(), m.mode() & 0o777))
            .expect("socket file")
    };
    let before: Vec<_> = bind.iter().map(|b| inode(b)).collect();
    for (b, (_, mode)) in bind.iter().zip(&before) {
        assert_eq!(*mode, 0o640, "{b}: the daemon chmodded an inherited socket");
    }
    if !bind.contains(&"stream.sock") {
        assert!(
            !p.socket.exists(),
            "the daemon bound socket.path although it got a socket"
        );
    }
    if !bind.contains(&"control.sock") {
        assert!(
            !p.control.exists(),
            "the daemon bound control.path although it got a socket"
        );
    }
    gw.wait_connected(1, WAIT).await.expect("connected");
    // The stream role is served at `stream_at`.
    let mut tap = Consumer::tap(&path(stream_at)).await;
    tap.first_push_through(&gw, "via an inherited socket").await;
    let st: Value = status(&path(control_at)).await;
    assert_eq!(
        st["state"], "connected",
        "the control role is served at {control_at}: {st}"
    );
    if warn_expected {
        d.logs("not bound to the configured path", WAIT).await;
    } else {
        let log = d.log();
        assert!(!log.contains("not bound to the configured path"), "{log}");
    }

    assert!(d.stop().await.success());
    let after: Vec<_> = bind.iter().map(|b| inode(b)).collect();
    assert_eq!(
        before, after,
        "inherited sockets must stay in place, not rebound or removed"
    );
}

/// Fake LISTEN_FDS (one socket unit, two ListenStream=, both fds named after the unit): each
/// fd is recognised by its bound path even in the "wrong" order; the daemon does not rebind,
/// chmod or unlink them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fds_matched_by_path() {
    let unit = "dingtalk-streamd.socket:dingtalk-streamd.socket";
    activated(
        Some(unit),
        &["control.sock", "stream.sock"],
        "stream.sock",
        "control.sock",
        false,
    )
    .await;
}

/// Sockets not at the configured paths: LISTEN_FDNAMES `stream` / `control` decide, then the
/// order; the configured paths are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fds_matched_by_name_then_order() {
    activated(
        Some("control:stream"),
        &["a.sock", "b.sock"],
        "b.sock",
        "a.sock",
        true,
    )
    .await;
    activated(None, &["x.sock", "y.sock"], "x.sock", "y.sock", true).await;
}
