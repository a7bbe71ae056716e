//! `sinks:`: defaults, the rules with the key each error names, and the secret files.

use super::super::{Config, ConfigError};
use super::*;

const MINIMAL: &str = "dingtalk:\n  client_id: dingabc\n  client_secret: s3cret\n";

fn parse(extra: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{MINIMAL}{extra}"), Path::new("/etc/x.yml"))
}

/// The key of an `Invalid` error, and its message.
fn invalid(extra: &str) -> (String, String) {
    match parse(extra).unwrap_err() {
        ConfigError::Invalid { key, message, .. } => (key, message),
        other => panic!("expected an invalid value, got {other}"),
    }
}

#[test]
fn nats_defaults_and_one_or_many_urls() {
    let c = parse("sinks:\n  nats: { url: nats://127.0.0.1:4222 }\n").unwrap();
    let n = c.sinks.nats.as_ref().unwrap();
    assert_eq!(n.url, vec!["nats://127.0.0.1:4222"]);
    assert_eq!(n.stream, "DINGTALK");
    assert_eq!(n.subject_prefix, "dingtalk");
    assert_eq!(n.duplicate_window.get().as_secs(), 600);
    assert!(c.sinks.webhooks.is_empty());
    assert_eq!(c.sinks.len(), 1);
    let c = parse(
        "sinks:\n  nats:\n    url: [tls://a.example:4222, tls://b.example:4222]\n    stream: EVENTS\n    subject_prefix: corp.dt\n    duplicate_window: 2h\n",
    )
    .unwrap();
    let n = c.sinks.nats.unwrap();
    assert_eq!(n.url.len(), 2);
    assert_eq!(
        (n.stream.as_str(), n.subject_prefix.as_str()),
        ("EVENTS", "corp.dt")
    );
    assert!(parse("").unwrap().sinks.is_empty(), "no sinks by default");
}

#[test]
fn webhook_defaults() {
    let c = parse("sinks:\n  webhooks:\n    - { url: http://127.0.0.1:8080/dingtalk }\n    - { url: https://hooks.example/x?k=1, topics: [a], timeout: 1s }\n").unwrap();
    let w = &c.sinks.webhooks;
    assert_eq!(w[0].topics, vec!["*"]);
    assert_eq!(w[0].timeout.get().as_secs(), 5);
    assert_eq!(w[1].timeout.get().as_secs(), 1);
    assert_eq!(
        w[1].shown_url(),
        "https://hooks.example/x",
        "no query in logs"
    );
    assert_eq!(c.sinks.len(), 2);
}

#[test]
fn urls_follow_the_tls_policy_and_carry_no_credentials() {
    let cases = [
        (
            "sinks:\n  nats: { url: nats://10.0.0.5:4222 }\n",
            "sinks.nats.url",
            "loopback",
        ),
        (
            "sinks:\n  nats: { url: [nats://127.0.0.1:1, \"nats://nats.example:4222\"] }\n",
            "sinks.nats.url[1]",
            "tls://",
        ),
        (
            "sinks:\n  nats: { url: \"nats://me:pw@127.0.0.1:4222\" }\n",
            "sinks.nats.url",
            "must not carry credentials",
        ),
        (
            "sinks:\n  nats: { url: \"nats://tok@127.0.0.1:4222\" }\n",
            "sinks.nats.url",
            "must not carry credentials",
        ),
        (
            "sinks:\n  nats: { url: http://127.0.0.1:4222 }\n",
            "sinks.nats.url",
            "unsupported scheme",
        ),
        (
            "sinks:\n  nats: { url: [] }\n",
            "sinks.nats.url",
            "at least one",
        ),
        (
            "sinks:\n  webhooks:\n    - { url: http://hooks.example/x }\n",
            "sinks.webhooks[0].url",
            "loopback",
        ),
        (
            "sinks:\n  webhooks:\n    - { url: https://u:p@hooks.example/x }\n",
            "sinks.webhooks[0].url",
            "credentials",
        ),
        (
            "sinks:\n  webhooks:\n    - { url: https://h.example/, topics: [] }\n",
            "sinks.webhooks[0].topics",
            "topics",
        ),
        (
            "sinks:\n  webhooks:\n    - { url: https://h.example/, timeout: 0s }\n",
            "sinks.webhooks[0].timeout",
            "greater than zero",
        ),
    ];
    for (yaml, key, says) in cases {
        let (k, m) = invalid(yaml);
        assert_eq!(k, key, "{yaml}: {m}");
        assert!(m.contains(says), "{yaml}: {m}");
        assert!(!m.contains("pw") && !m.contains("tok@"), "no secret in {m}");
    }
    // TLS with a private CA makes plain nats:// acceptable: the client requires TLS then.
    parse("sinks:\n  nats: { url: nats://10.0.0.5:4222, tls_ca_file: /etc/ca.pem }\n").unwrap();
    parse("sinks:\n  nats: { url: \"nats://[::1]:4222\" }\n").unwrap();
    parse("sinks:\n  nats: { url: nats://localhost:4222 }\n").unwrap();
}

#[test]
fn names_and_auth_combinations() {
    let base = "sinks:\n  nats:\n    url: nats://127.0.0.1:4222\n";
    let cases = [
        ("    stream: \"A.B\"\n", "sinks.nats.stream"),
        (
            "    subject_prefix: \"a..b\"\n",
            "sinks.nats.subject_prefix",
        ),
        ("    subject_prefix: \"a.>\"\n", "sinks.nats.subject_prefix"),
        ("    duplicate_window: 0s\n", "sinks.nats.duplicate_window"),
        (
            "    token_file: /t\n    credentials_file: /c\n",
            "sinks.nats",
        ),
        ("    user: u\n", "sinks.nats.password_file"),
        ("    password_file: /p\n", "sinks.nats.user"),
    ];
    for (extra, key) in cases {
        let (k, m) = invalid(&format!("{base}{extra}"));
        assert_eq!(k, key, "{extra}: {m}");
    }
    let (_, _, msg) = match parse(&format!("{base}    password: inline\n")).unwrap_err() {
        ConfigError::Parse {
            line,
            column,
            message,
            ..
        } => (line, column, message),
        other => panic!("{other}"),
    };
    assert!(
        msg.contains("unknown field `password`"),
        "no inline secrets: {msg}"
    );
}

#[test]
fn sinks_count_towards_max_groups() {
    let (key, msg) = invalid(
        "groups: [a]\nlimits:\n  max_groups: 2\nsinks:\n  nats: { url: nats://127.0.0.1:4222 }\n  webhooks:\n    - { url: http://127.0.0.1:1/ }\n",
    );
    assert_eq!(key, "groups");
    assert!(msg.contains("sinks: adds 2"), "{msg}");
}

#[test]
fn secret_files_are_read_at_load_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let token = write("token", "t0ken-value\n");
    let hook = write("hook", "hook-key");
    let empty = write("empty", "\n");
    let creds = write("creds", "-----BEGIN NATS USER JWT-----\nnot a jwt\n");
    let config = |nats: &str, hook_secret: &Path| {
        let text = format!(
            "{MINIMAL}sinks:\n  nats:\n    url: nats://127.0.0.1:4222\n{nats}  webhooks:\n    - {{ url: http://127.0.0.1:1/, secret_file: {} }}\n",
            hook_secret.display()
        );
        let path = dir.path().join("config.yml");
        std::fs::write(&path, text).unwrap();
        // The client secret is inline: the file must not be readable by everyone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Config::load(&path)
    };
    let l = config(&format!("    token_file: {}\n", token.display()), &hook).unwrap();
    assert_eq!(
        l.sink_secrets.nats.token.as_ref().unwrap().expose(),
        "t0ken-value"
    );
    assert_eq!(
        l.sink_secrets.webhooks[0].as_ref().unwrap().expose(),
        "hook-key"
    );
    let shown = format!("{:?} {}", l.sink_secrets, l.config.to_redacted_yaml());
    assert!(
        !shown.contains("t0ken-value") && !shown.contains("hook-key"),
        "{shown}"
    );

    let e = config(&format!("    token_file: {}\n", empty.display()), &hook).unwrap_err();
    assert!(
        e.to_string().contains("sinks.nats.token_file") && e.to_string().contains("is empty"),
        "{e}"
    );
    let e = config("    token_file: /nonexistent/token\n", &hook).unwrap_err();
    assert!(
        e.to_string()
            .contains("sinks.nats.token_file: cannot read /nonexistent/token"),
        "{e}"
    );
    let e = config(
        &format!("    credentials_file: {}\n", creds.display()),
        &hook,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("not a usable NATS .creds file"),
        "{e}"
    );
    assert!(!e.to_string().contains("not a jwt"), "{e}");
    let e = config(
        &format!("    user: me\n    password_file: {}\n", token.display()),
        &empty,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("sinks.webhooks[0].secret_file"),
        "{e}"
    );
}

#[test]
fn a_secret_file_every_user_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hook.key");
    std::fs::write(&key, "k3y\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "{MINIMAL}sinks:\n  webhooks:\n    - {{ url: http://127.0.0.1:1/, secret_file: {} }}\n",
            key.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = Config::load(&config).unwrap_err().to_string();
    assert!(e.contains("sinks.webhooks[0].secret_file"), "{e}");
    assert!(e.contains("readable by every user"), "{e}");
    assert!(!e.contains("k3y"), "{e}");
}

#[test]
fn a_webhook_urls_token_is_neither_printed_nor_echoed_in_errors() {
    let c =
        parse("sinks:\n  webhooks:\n    - url: https://hooks.example/in?access_token=T0KEN123\n")
            .unwrap();
    let printed = c.to_redacted_yaml();
    assert!(!printed.contains("T0KEN123"), "{printed}");
    assert!(
        printed.contains("https://hooks.example/in?redacted"),
        "{printed}"
    );
    // What check-config prints loads again.
    let again = Config::parse(&printed, Path::new("/etc/x.yml")).unwrap();
    assert_eq!(again.sinks.webhooks.len(), 1);
    let (key, message) =
        invalid("sinks:\n  webhooks:\n    - url: \"ht tp://x?access_token=T0KEN123\"\n");
    assert_eq!(key, "sinks.webhooks[0].url");
    assert!(!message.contains("T0KEN123"), "{message}");
}
