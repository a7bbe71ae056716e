//! The command line through the real binary: config errors with file:line (exit 78),
//! `check-config` with the secret redacted for each secret source, credentials rejected before
//! the first connection (exit 78 with what to check), SIGTERM/SIGINT (Close frame, socket files
//! removed, exit 0), the stale-socket rule, and `status` exit codes 0/1/3/4.

mod common;

use common::*;
use dingtalk_streamd_sim::{CloseReason, GatewayEvent, TicketFault};
use nix::sys::signal::Signal;
use std::path::Path;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Writes `text` as a config in a fresh temp dir and returns (dir, path).
fn config_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("config.yml");
    write_private(&p, text);
    (dir, p)
}

const HEAD: &str = "dingtalk:\n  client_id: dingabc\n  client_secret: s3\n";

#[tokio::test]
async fn config_errors_name_the_file_and_line_and_exit_78() {
    // (what, config, line, what the message must also say)
    let cases: &[(&str, String, usize, &[&str])] = &[
        (
            "YAML syntax",
            format!("{HEAD} bad_indent: 1\n"),
            4,
            &["did not find expected key"],
        ),
        (
            "unterminated quote",
            format!("{HEAD}log:\n  level: \"info\n"),
            6,
            &["while scanning a quoted scalar at line 5 column 10"],
        ),
        (
            "unknown key",
            format!("{HEAD}keepalive:\n  ping_intervall: 1s\n"),
            5,
            &["unknown field `ping_intervall`", "ping_interval"],
        ),
        (
            "unknown top-level key",
            format!("{HEAD}sockets:\n  path: /tmp/x\n"),
            4,
            &["unknown field `sockets`"],
        ),
        (
            "missing client_id",
            "dingtalk:\n  client_secret: s3\n".to_string(),
            2,
            &[
                "missing field `client_id`",
                "not configured: set dingtalk.client_id in",
            ],
        ),
        (
            "bad duration",
            format!("{HEAD}reconnect:\n  max_delay: 10 parsecs\n"),
            5,
            &["invalid duration \"10 parsecs\"", "10s"],
        ),
        (
            "bad size",
            format!("{HEAD}limits:\n  max_line_bytes: lots\n"),
            5,
            &["invalid size"],
        ),
    ];
    for (what, text, line, needles) in cases {
        let (_dir, p) = config_file(text);
        let prefix = format!("{}:{line}:", p.display());
        for sub in ["check-config", "run"] {
            let o = output(&["--config", path_str(&p), sub], &[]).await;
            assert_eq!(o.code, Some(78), "{what} / {sub}: stderr:\n{}", o.stderr);
            assert!(
                o.stderr.contains(&prefix),
                "{what} / {sub}: no {prefix:?} in:\n{}",
                o.stderr
            );
            for n in *needles {
                assert!(
                    o.stderr.contains(n),
                    "{what} / {sub}: no {n:?} in:\n{}",
                    o.stderr
                );
            }
            if *what == "missing client_id" {
                let want = format!("not configured: set dingtalk.client_id in {}", p.display());
                assert!(o.stderr.contains(&want), "{}", o.stderr);
            }
        }
    }
}

#[tokio::test]
async fn cross_field_and_missing_secret_errors_exit_78_naming_the_key() {
    let cases: &[(&str, String, &str)] = &[
        (
            "pong >= ping",
            format!("{HEAD}keepalive:\n  ping_interval: 1s\n  pong_timeout: 2s\n"),
            "keepalive.pong_timeout",
        ),
        (
            "no secret at all",
            "dingtalk:\n  client_id: dingabc\n".to_string(),
            "secret",
        ),
    ];
    for (what, text, needle) in cases {
        let (_dir, p) = config_file(text);
        for sub in ["check-config", "run"] {
            let o = output(
                &["--config", path_str(&p), sub],
                &[("CREDENTIALS_DIRECTORY", "/nonexistent-creds")],
            )
            .await;
            assert_eq!(o.code, Some(78), "{what} / {sub}: {}", o.stderr);
            assert!(
                o.stderr.contains(&p.display().to_string()),
                "{what} / {sub}: {}",
                o.stderr
            );
            assert!(o.stderr.contains(needle), "{what} / {sub}: {}", o.stderr);
        }
    }
}

#[tokio::test]
async fn comment_only_and_shipped_configs_are_not_configured() {
    let (_dir, comments) = config_file("# all commented out\n#dingtalk:\n#  client_id: x\n\n---\n");
    let (_dir2, empty) = config_file("");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yml");
    for p in [&comments, &empty, &shipped] {
        for sub in ["run", "check-config"] {
            let o = output(&["--config", path_str(p), sub], &[]).await;
            assert_eq!(o.code, Some(78), "{} / {sub}: {}", p.display(), o.stderr);
            let want = format!("not configured: set dingtalk.client_id in {}", p.display());
            assert!(
                o.stderr.contains(&want),
                "{} / {sub}: {}",
                p.display(),
                o.stderr
            );
        }
    }
    // A missing file is a config error too.
    let o = output(
        &["--config", "/nonexistent/dingtalk-streamd.yml", "run"],
        &[],
    )
    .await;
    assert_eq!(o.code, Some(78), "{}", o.stderr);
    assert!(
        o.stderr.contains("/nonexistent/dingtalk-streamd.yml"),
        "{}",
        o.stderr
    );
}

#[tokio::test]
async fn check_config_prints_the_effective_config_with_the_secret_redacted_for_every_source() {
    const INLINE: &str = "inl1ne-S3CRET-7f3a";
    const FILE: &str = "f1le-S3CRET-91bc";
    const CRED: &str = "cr3d-S3CRET-0d2e";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    write_private(&secret_file, &format!("{FILE}\n"));
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client_secret"), CRED).unwrap();
    let creds_s = path_str(&creds).to_owned();

    type Envs<'a> = Vec<(&'a str, &'a str)>;
    // (source, config head, environment, the secret, how check-config names the source)
    let cases: Vec<(&str, String, Envs, &str, String)> = vec![
        (
            "inline",
            format!("dingtalk:\n  client_id: dingabc\n  client_secret: \"{INLINE}\"\n"),
            vec![],
            INLINE,
            "dingtalk.client_secret (inline)".into(),
        ),
        (
            "file",
            format!(
                "dingtalk:\n  client_id: dingabc\n  client_secret_file: {}\n",
                secret_file.display()
            ),
            vec![],
            FILE,
            format!("file {}", secret_file.display()),
        ),
        (
            "systemd credential",
            "dingtalk:\n  client_id: dingabc\n".into(),
            vec![("CREDENTIALS_DIRECTORY", creds_s.as_str())],
            CRED,
            format!(
                "systemd credential {}",
                creds.join("client_secret").display()
            ),
        ),
    ];
    for (what, text, envs, secret, source) in cases {
        let (_d, p) = config_file(&format!(
            "{text}keepalive:\n  ping_interval: 2s\n  pong_timeout: 1s\n"
        ));
        // --quiet (what ExecReload= runs): the same verdict, nothing printed.
        let q = output(
            &["--config", path_str(&p), "check-config", "--quiet"],
            &envs,
        )
        .await;
        assert_eq!(q.code, Some(0), "{what} --quiet: {}", q.stderr);
        assert_eq!(
            (q.stdout.as_str(), q.stderr.as_str()),
            ("", ""),
            "{what} --quiet printed"
        );
        let o = output(&["--config", path_str(&p), "check-config"], &envs).await;
        assert_eq!(o.code, Some(0), "{what}: {}", o.stderr);
        for s in [&o.stdout, &o.stderr] {
            assert!(!s.contains(secret), "{what}: the secret was printed:\n{s}");
        }
        assert!(
            o.stdout.contains(&source),
            "{what}: source {source:?} not named:\n{}",
            o.stdout
        );
        // The effective config: valid YAML with the defaults filled in and our values kept.
        let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("{what}: not YAML ({e}):\n{}", o.stdout));
        assert_eq!(
            y["dingtalk"]["client_id"].as_str(),
            Some("dingabc"),
            "{what}"
        );
        assert_eq!(
            y["keepalive"]["ping_interval"].as_str(),
            Some("2s"),
            "{what}: {}",
            o.stdout
        );
        assert_eq!(
            y["reconnect"]["max_delay"].as_str(),
            Some("1m"),
            "{what}: {}",
            o.stdout
        );
        assert_eq!(
            y["socket"]["path"].as_str(),
            Some(dingtalk_streamd::config::DEFAULT_SOCKET_PATH),
            "{what}"
        );
        if what == "inline" {
            assert_eq!(
                y["dingtalk"]["client_secret"].as_str(),
                Some(dingtalk_streamd::secret::REDACTED),
                "{}",
                o.stdout
            );
        }
    }
}

#[tokio::test]
async fn credentials_rejected_before_the_first_connection_exit_78_with_what_to_check() {
    for (status, needles) in [
        (
            401u16,
            &[
                "401",
                "authFailed",
                "dingtalk.client_id",
                "secret",
                "developer console",
            ][..],
        ),
        (
            400,
            &[
                "400",
                "systemError",
                "published",
                "Stream",
                "dingtalk.client_id",
            ][..],
        ),
    ] {
        let gw = gateway(false).await;
        gw.set_ticket_fault(Some(TicketFault::status(status)));
        let paths = Paths::new();
        paths.configure(&gw, "");
        let o = run_to_exit(&paths).await;
        let err = o.stderr;
        assert_eq!(o.code, Some(78), "HTTP {status}: {err}");
        for n in needles {
            assert!(err.contains(n), "HTTP {status}: no {n:?} in:\n{err}");
        }
        assert!(
            !err.contains(SECRET),
            "HTTP {status}: secret printed:\n{err}"
        );
        assert_eq!(gw.tickets_issued(), 0);
        assert!(!gw.ticket_requests().is_empty());
        assert!(
            !paths.socket.exists() && !paths.control.exists(),
            "socket files left behind"
        );
    }
}

#[tokio::test]
async fn sigterm_and_sigint_close_the_websocket_remove_the_sockets_and_exit_0() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let gw = gateway(false).await;
        let paths = Paths::new();
        paths.configure(&gw, "");
        let mut p = start_run(&paths, &[]).await;
        let conn = gw.wait_connected(1, WAIT).await.expect("connected")[0];
        wait_for_socket(&paths.control).await;
        let mut closed = gw.subscribe();
        p.signal(sig);
        let ev = closed
            .wait_for(
                |e| matches!(e, GatewayEvent::Closed { conn: c, .. } if *c == conn),
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("{sig}: no close: {e}\n{}", p.stderr()));
        assert!(
            matches!(
                &ev.event,
                GatewayEvent::Closed {
                    reason: CloseReason::ClientClose { .. },
                    ..
                }
            ),
            "{sig}: not a client Close frame: {ev:?}"
        );
        let st = p.wait_exit(WAIT).await;
        assert_eq!(st.code(), Some(0), "{sig}: {}", p.stderr());
        assert!(
            !paths.socket.exists(),
            "{sig}: stream socket file left behind"
        );
        assert!(
            !paths.control.exists(),
            "{sig}: control socket file left behind"
        );
    }
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_but_a_regular_file_is_refused() {
    let gw = gateway(false).await;
    // Stale: a socket file nobody listens on (a daemon that was killed).
    let paths = Paths::new();
    drop(std::os::unix::net::UnixListener::bind(&paths.socket).unwrap());
    drop(std::os::unix::net::UnixListener::bind(&paths.control).unwrap());
    assert!(paths.socket.exists());
    paths.configure(&gw, "");
    let mut p = start_run(&paths, &[]).await;
    let mut tap = Consumer::tap(&paths.socket).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let pushed = gw.push_bot_text("through a replaced socket").await.unwrap();
    assert_eq!(tap.next().await["message_id"], pushed.message_id.as_str());
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).await.code(), Some(0), "{}", p.stderr());

    // A regular file is someone's data: never replaced.
    let paths = Paths::new();
    std::fs::write(&paths.socket, "not a socket").unwrap();
    paths.configure(&gw, "");
    let o = run_to_exit(&paths).await;
    let err = o.stderr;
    assert_ne!(o.code, Some(0), "started over a regular file: {err}");
    assert_eq!(o.code, Some(1), "{err}");
    assert!(
        err.contains(&paths.socket.display().to_string()),
        "the path is not named:\n{err}"
    );
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&paths.socket).unwrap(),
        "not a socket"
    );
}

#[tokio::test]
async fn status_exit_codes_connected_not_connected_not_running() {
    // Not running: nothing at the control socket; the message names it.
    let paths = Paths::new();
    let gw = gateway(false).await;
    paths.configure(&gw, "");
    let cfg = path_str(&paths.config).to_owned();
    let o = output(&["--config", &cfg, "status"], &[]).await;
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(
        o.stderr.contains(&paths.control.display().to_string()),
        "{}",
        o.stderr
    );
    let other = paths.dir.path().join("elsewhere.sock");
    let o = output(&["status", "--control", path_str(&other)], &[]).await;
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(
        o.stderr.contains(&other.display().to_string()),
        "{}",
        o.stderr
    );

    // Running and connected.
    let mut p = start_run(&paths, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    wait_for_socket(&paths.control).await;
    let o = output(&["--config", &cfg, "status"], &[]).await;
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("link:      connected"), "{}", o.stdout);
    for line in [
        "reconnects: none",
        "last inbound: none since start",
        "messages:  0 received",
    ] {
        assert!(o.stdout.contains(line), "no {line:?} in:\n{}", o.stdout);
    }
    let o = output(&["--config", &cfg, "status", "--json"], &[]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value =
        serde_json::from_str(o.stdout.trim()).expect("status --json is JSON");
    assert_eq!(v["state"], "connected");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let o = output(&["status", "--control", path_str(&paths.control)], &[]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).await.code(), Some(0));

    // Running but not connected: the ticket endpoint answers 503.
    let gw = gateway(false).await;
    gw.set_ticket_fault(Some(TicketFault::status(503)));
    let paths = Paths::new();
    paths.configure(&gw, "");
    let cfg = path_str(&paths.config).to_owned();
    let mut p = start_run(&paths, &[]).await;
    gw.wait_for(
        |e| matches!(e, GatewayEvent::TicketRejected { status: 503 }),
        WAIT,
    )
    .await
    .unwrap();
    wait_for_socket(&paths.control).await;
    let o = output(&["--config", &cfg, "status", "--json"], &[]).await;
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("JSON");
    assert_ne!(v["state"], "connected");
    let o = output(&["--config", &cfg, "status"], &[]).await;
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).await.code(), Some(0), "{}", p.stderr());
}

/// `help` is a subcommand like the others: `help --help` explains it, `help COMMAND...`
/// prints what `COMMAND... --help` prints (also under `group`), an unknown name is a usage
/// error (exit 2).
#[tokio::test]
async fn the_help_subcommand_answers_help_too() {
    let o = output(&["help", "--help"], &[]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout
            .contains("Usage: dingtalk-streamd help [OPTIONS] [COMMAND]..."),
        "{}",
        o.stdout
    );
    for path in [&["status"][..], &["group", "replay"], &["tail"]] {
        let mut help_args = vec!["help"];
        help_args.extend_from_slice(path);
        let via_help = output(&help_args, &[]).await;
        let mut flag_args = path.to_vec();
        flag_args.push("--help");
        let via_flag = output(&flag_args, &[]).await;
        assert_eq!(via_help.code, Some(0), "{path:?}: {}", via_help.stderr);
        assert_eq!(via_help.stdout, via_flag.stdout, "{path:?}");
    }
    let o = output(&["group", "help", "rm"], &[]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("Usage: dingtalk-streamd group rm"),
        "{}",
        o.stdout
    );
    let o = output(&["group", "help", "--help"], &[]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let o = output(&["help", "nope"], &[]).await;
    assert_eq!(o.code, Some(2));
    assert!(
        o.stderr.contains("unrecognized subcommand 'nope'"),
        "{}",
        o.stderr
    );
}

#[tokio::test]
async fn status_tells_not_running_from_running_but_not_answering() {
    use dingtalk_streamd::control::client::STATUS_WAIT;
    let dir = tempfile::tempdir().unwrap();
    // A socket file nobody listens on (a daemon that was killed): connection refused.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let o = output(&["status", "--control", path_str(&stale)], &[]).await;
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(
        o.stderr.contains(&format!(
            "dingtalk-streamd is not running: nothing listens on {}",
            stale.display()
        )),
        "{}",
        o.stderr
    );

    // A listener that accepts (the kernel's backlog) and never answers: alive, not answering.
    let busy = dir.path().join("busy.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&busy).unwrap();
    let started = std::time::Instant::now();
    // (`group` and the other commands wait ANSWER_WAIT, longer, with the same message.)
    let status = output(&["status", "--control", path_str(&busy)], &[]).await;
    assert_eq!(status.code, Some(4), "{}", status.stderr);
    assert!(
        status.stderr.contains(&format!(
            "dingtalk-streamd is running but not answering: {} accepted the connection but sent no answer within {} s",
            busy.display(),
            STATUS_WAIT.as_secs()
        )),
        "{}",
        status.stderr
    );
    assert!(!status.stderr.contains("not running"), "{}", status.stderr);
    assert!(started.elapsed() >= STATUS_WAIT);
}
