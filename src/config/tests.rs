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

#[test]
fn secret_sources() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-file\n").unwrap();
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
