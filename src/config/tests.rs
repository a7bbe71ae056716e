//! Config parsing and validation: defaults, every error kind with its location.

use super::*;

const MINIMAL: &str = "dingtalk:\n  client_id: dingabc\n  client_secret: s3cret\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/x.yml"))
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.dingtalk.open_url, DEFAULT_OPEN_URL);
    assert_eq!(c.dingtalk.subscriptions.len(), 2);
    assert_eq!(c.keepalive.ping_interval.get().as_secs(), 10);
    assert_eq!(c.keepalive.pong_timeout.get().as_secs(), 5);
    assert_eq!(c.keepalive.tcp_user_timeout.get().as_secs(), 30);
    assert_eq!(c.reconnect.max_delay.get().as_secs(), 60);
    assert_eq!(c.socket.path, Path::new(DEFAULT_SOCKET_PATH));
    assert_eq!(c.socket.mode, FileMode(0o660));
    assert_eq!(c.spool.max_bytes, ByteSize::gib(1));
    assert_eq!(c.limits.max_pending_acks, 10_000);
    assert!(c.groups.is_empty());
    assert_eq!(c.limits.max_groups, 64);
    assert!(c.consumers.adhoc_groups);
    assert_eq!(c.consumers.adhoc_ttl.get().as_secs(), 24 * 3600);
}

#[test]
fn example_config_parses() {
    let shipped = include_str!("../../config.example.yml");
    let e = parse(shipped).unwrap_err();
    assert!(matches!(e, ConfigError::NotConfigured { .. }), "{e}");
    let text = shipped.replace("client_id: \"\"", "client_id: dingxxxxxxxx");
    let c = parse(&text).unwrap();
    assert_eq!(c.groups, vec!["bot".to_string()]);
}

fn parse_err(text: &str) -> (usize, usize, String) {
    match parse(text).unwrap_err() {
        ConfigError::Parse {
            line,
            column,
            message,
            ..
        } => (line, column, message),
        other => panic!("expected a parse error, got {other}"),
    }
}

#[test]
fn unknown_key_names_line() {
    let (line, _, msg) = parse_err(&format!("{MINIMAL}keepalive:\n  ping_intervall: 3s\n"));
    assert_eq!(line, 5);
    assert!(msg.contains("unknown field `ping_intervall`"), "{msg}");
}

#[test]
fn bad_duration_names_line() {
    let (line, _, msg) = parse_err(&format!("{MINIMAL}reconnect:\n  max_delay: soon\n"));
    assert_eq!(line, 5);
    assert!(
        msg.starts_with("reconnect.max_delay: invalid duration"),
        "{msg}"
    );
}

#[test]
fn syntax_error_names_line_and_column() {
    let (line, col, _) = parse_err("dingtalk:\n  client_id: [unclosed\n");
    assert!(line >= 2, "line {line} col {col}");
}

#[test]
fn missing_client_id_says_not_configured() {
    let (line, _, msg) = parse_err("dingtalk:\n  client_secret: x\n");
    assert_eq!(line, 2);
    assert!(msg.contains("set dingtalk.client_id"), "{msg}");
}

#[test]
fn comment_only_file_is_not_configured() {
    let e = parse("# nothing here\n\n").unwrap_err();
    assert!(matches!(e, ConfigError::NotConfigured { .. }));
    assert!(
        e.to_string()
            .contains("not configured: set dingtalk.client_id in /etc/x.yml")
    );
}

#[test]
fn cross_field_rules_name_key_path() {
    let e = parse(&format!(
        "{MINIMAL}keepalive:\n  ping_interval: 2s\n  pong_timeout: 2s\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("keepalive.pong_timeout"), "{e}");
    let e = parse("dingtalk:\n  client_id: a\n  client_secret: b\n  client_secret_file: /c\n")
        .unwrap_err();
    assert!(e.to_string().contains("dingtalk.client_secret"), "{e}");
    let e = parse(&format!(
        "{MINIMAL}groups: [a, b]\nlimits:\n  max_groups: 1\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("groups") && e.to_string().contains("limits.max_groups (1)"),
        "{e}"
    );
}

#[test]
fn plain_http_only_on_loopback() {
    let ok = format!("{MINIMAL}  open_url: http://127.0.0.1:9/v1.0/gateway/connections/open\n");
    parse(&ok).unwrap();
    let bad = format!("{MINIMAL}  open_url: http://example.com/open\n");
    let e = parse(&bad).unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
}

#[test]
fn event_topic_must_be_star() {
    let text = format!("{MINIMAL}  subscriptions:\n    - {{ type: EVENT, topic: foo }}\n");
    assert!(
        parse(&text)
            .unwrap_err()
            .to_string()
            .contains("subscriptions[0].topic")
    );
}

/// Writes `text` to `path` with `mode`, as an operator would with `install -m`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn secret_sources() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    write_mode(&file, "from-file\n", 0o600);
    let f = Path::new("/etc/x.yml");

    let c = parse(MINIMAL).unwrap();
    let (s, src) = validate::resolve_secret(&c, f, None).unwrap();
    assert_eq!((s.expose(), src), ("s3cret", SecretSource::Inline));

    let c = parse(&format!(
        "dingtalk:\n  client_id: a\n  client_secret_file: {}\n",
        file.display()
    ))
    .unwrap();
    let (s, _) = validate::resolve_secret(&c, f, None).unwrap();
    assert_eq!(s.expose(), "from-file");

    let cred = tempfile::tempdir().unwrap();
    std::fs::write(cred.path().join("client_secret"), "from-cred").unwrap();
    let c = parse("dingtalk:\n  client_id: a\n").unwrap();
    let (s, src) = validate::resolve_secret(&c, f, Some(cred.path())).unwrap();
    assert_eq!(s.expose(), "from-cred");
    assert!(matches!(src, SecretSource::Credential(_)));
    let e = validate::resolve_secret(&c, f, None).unwrap_err();
    assert!(
        e.to_string().contains("dingtalk.client_secret: not set"),
        "{e}"
    );

    let c = parse("dingtalk:\n  client_id: a\n  client_secret: \" padded\"\n").unwrap();
    let e = validate::resolve_secret(&c, f, None).unwrap_err();
    assert!(e.to_string().contains("whitespace"), "{e}");
}

#[test]
fn redacted_yaml_hides_secret_and_proxy_password() {
    let c = parse(&format!("{MINIMAL}proxy: http://user:pw@127.0.0.1:3128\n")).unwrap();
    let y = c.to_redacted_yaml();
    assert!(!y.contains("s3cret") && !y.contains(":pw@"), "{y}");
    assert!(y.contains(crate::secret::REDACTED));
}

/// The sample of the issue: a bad value on a later key of a section.
const LATER_KEY: &str = "dingtalk:\n  client_id: dingabc\n  client_secret: s3cret\n\n\n\n\n\n\n\n\n\n\nkeepalive:\n  ping_interval: 10s\n  pong_timeout: 5s\n  tcp_user_timeout: forever\n";

#[test]
fn a_bad_value_on_a_later_key_names_that_key_and_its_own_line() {
    let (line, col, msg) = parse_err(LATER_KEY);
    assert_eq!((line, col), (17, 21), "{msg}");
    assert!(
        msg.starts_with("keepalive.tcp_user_timeout: invalid duration \"forever\""),
        "{msg}"
    );
    // The same for sizes, modes and the proxy URL, wherever they sit.
    for (text, line, key) in [
        (
            format!("{MINIMAL}limits:\n  max_consumers: 3\n  max_line_bytes: lots\n"),
            6,
            "limits.max_line_bytes: invalid size",
        ),
        (
            format!("{MINIMAL}limits:\n  max_consumers: 3\n  max_line_bytes: -5\n"),
            6,
            "limits.max_line_bytes: size -5 is negative",
        ),
        (
            format!("{MINIMAL}socket:\n  path: /tmp/s\n  mode: \"0999\"\n"),
            6,
            "socket.mode: invalid mode",
        ),
        (
            format!("{MINIMAL}log:\n  level: info\nproxy: socks5://x:1\n"),
            6,
            "proxy: unsupported proxy scheme",
        ),
    ] {
        let (l, _, msg) = parse_err(&text);
        assert_eq!(l, line, "{msg}");
        assert!(msg.starts_with(key), "{msg}");
    }
}

#[test]
fn absurd_durations_and_sizes_are_refused_at_load_naming_the_key_and_line() {
    // Parses as a duration, but no clock could add it.
    let (line, _, msg) = parse_err(&format!(
        "{MINIMAL}reconnect:\n  initial_delay: 1s\n  max_delay: 300000000000y\n"
    ));
    assert_eq!(line, 6);
    assert!(
        msg.starts_with("reconnect.max_delay: duration \"300000000000y\" is too long"),
        "{msg}"
    );
    for (extra, key, want) in [
        (
            "callbacks:\n  - { topic: /t, group: bot, timeout: 2h }\n",
            "callbacks[0].timeout",
            "must be at most 1m (got 2h)",
        ),
        (
            "keepalive:\n  ping_interval: 2h\n  pong_timeout: 1s\n",
            "keepalive.ping_interval",
            "must be at most 1h",
        ),
        (
            "consumers:\n  ack_wait: 0s\n",
            "consumers.ack_wait",
            "must be greater than zero",
        ),
        (
            "reconnect:\n  stable_after: 0s\n",
            "reconnect.stable_after",
            "must be greater than zero",
        ),
        (
            "limits:\n  max_frame_bytes: 1TiB\n",
            "limits.max_frame_bytes",
            "must be at most 64MiB",
        ),
        (
            "limits:\n  recent_cache_bytes: 0\n",
            "limits.recent_cache_bytes",
            "must be greater than zero",
        ),
        (
            "consumers:\n  in_flight: 4000000000\n",
            "consumers.in_flight",
            "must be between 1 and 1000000",
        ),
    ] {
        let text = format!("{MINIMAL}{extra}");
        let e = parse(&text).unwrap_err();
        let ConfigError::Invalid {
            at,
            key: k,
            message,
            ..
        } = &e
        else {
            panic!("{extra}: {e}");
        };
        assert_eq!(k, key, "{e}");
        assert!(message.contains(want), "{e}");
        let (line, _) = at.unwrap_or_else(|| panic!("{e}: no line"));
        assert!((4..=5).contains(&line), "{e}");
        assert!(
            e.to_string().starts_with(&format!("/etc/x.yml:{line}:")),
            "{e}"
        );
    }
    // Small values are fine: the simulator and the tests use 100 ms timers and tiny limits.
    parse(&format!(
        "{MINIMAL}keepalive:\n  ping_interval: 100ms\n  pong_timeout: 50ms\nlimits:\n  max_frame_bytes: 100\n  max_line_bytes: 10\n  max_pending_bytes: 100\nspool:\n  max_bytes: 1\n"
    ))
    .unwrap();
}

#[test]
fn a_cross_field_error_names_the_line_of_the_key_it_blames() {
    let e = parse(&format!(
        "{MINIMAL}keepalive:\n  ping_interval: 2s\n  pong_timeout: 3s\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("/etc/x.yml:6:17: keepalive.pong_timeout: must be shorter"),
        "{e}"
    );
    let e = parse(&format!("{MINIMAL}keepalive:\n  pong_timeout: 30s\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/etc/x.yml:5:17: keepalive.pong_timeout"),
        "{e}"
    );
    // A default that breaks a rule has no line: the key path says where to add it.
    let e = parse(&format!("{MINIMAL}keepalive:\n  ping_interval: 2s\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/etc/x.yml: keepalive.pong_timeout: must be shorter"),
        "{e}"
    );
}

#[test]
fn log_level_must_be_a_level_or_directives() {
    for ok in [
        "info",
        "TRACE",
        "off",
        "warn,dingtalk_streamd=debug",
        "dingtalk_streamd::stream=trace",
        " debug ",
    ] {
        parse(&format!("{MINIMAL}log:\n  level: \"{ok}\"\n"))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "verbose",
        "warnn",
        "",
        "info,dingtalk_streamd",
        "x=loud",
        "=debug",
    ] {
        let e = parse(&format!("{MINIMAL}log:\n  level: \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/x.yml:5:10: log.level: ") && e.contains("write a level"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn secret_files_open_to_others_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let cfg = dir.path().join("config.yml");
    let by_file = format!(
        "dingtalk:\n  client_id: a\n  client_secret_file: {}\n",
        secret.display()
    );
    write_mode(&cfg, &by_file, 0o644);
    for (mode, ok) in [(0o600, true), (0o640, true), (0o644, false), (0o604, false)] {
        write_mode(&secret, "s\n", mode);
        match Config::load(&cfg) {
            Ok(_) => assert!(ok, "{mode:o} accepted"),
            Err(e) => {
                let e = e.to_string();
                assert!(!ok, "{mode:o}: {e}");
                assert!(
                    e.contains(&format!(
                        "{}:3:23: dingtalk.client_secret_file:",
                        cfg.display()
                    )) && e.contains("readable by every user")
                        && e.contains(&format!("chmod 0640 {}", secret.display())),
                    "{e}"
                );
            }
        }
    }
    // The config itself when the secret is inline: 0640 is right, 0644 is not.
    write_mode(&cfg, MINIMAL, 0o640);
    Config::load(&cfg).unwrap();
    write_mode(&cfg, MINIMAL, 0o644);
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("dingtalk.client_secret:")
            && e.contains(&format!("chmod 0640 {}", cfg.display()))
            && !e.contains("s3cret"),
        "{e}"
    );
    // Without a secret in it, a readable config is fine; one anyone may write never is.
    write_mode(&secret, "s\n", 0o600);
    write_mode(&cfg, &by_file, 0o644);
    Config::load(&cfg).unwrap();
    write_mode(&cfg, &by_file, 0o666);
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("chmod o-w"), "{e}");
}
