//! `check-config` refuses whatever `run` would refuse before connecting, with exit 78 and a
//! message that names the key, its own line and what to do: a spool directory that cannot be
//! created or is a file, an unreadable or non-PEM `tls.ca_file`, a `log.level` typo, an absurd
//! duration, a secret file others can read, a bad value on a later key of a section, a socket
//! path that is a file. A spool directory still to be created (its parent exists) passes, and
//! `run` creates it; every file the daemon creates there is private whatever the umask. And
//! `check-config` never takes the spool's lock, so it passes while the daemon runs (as
//! `ExecReload=` needs).

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The 1-based line of the first line of `yaml` that contains `needle`.
fn line_of(yaml: &str, needle: &str) -> usize {
    yaml.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config:\n{yaml}"))
        + 1
}

/// Runs `check-config` and then `run` on `paths`; both must exit 78 with every needle in stderr.
async fn both_refuse(what: &str, paths: &Paths, needles: &[String]) {
    let cfg = path_str(&paths.config);
    for sub in ["check-config", "run"] {
        let o = output(&["--config", cfg, sub], &[]).await;
        assert_eq!(o.code, Some(78), "{what}: {sub}: {}{}", o.stdout, o.stderr);
        for n in needles {
            assert!(
                o.stderr.contains(n.as_str()),
                "{what}: {sub}: {n:?} missing from: {}",
                o.stderr
            );
        }
        assert!(
            !o.stderr.contains(SECRET),
            "{what}: {sub} printed the secret"
        );
    }
}

#[tokio::test]
async fn check_config_refuses_what_run_refuses_with_exit_78_and_what_to_do() {
    let gw = gateway(false).await;
    let p = Paths::new();
    let cfg = p.config.display().to_string();
    let spool = p.spool.display().to_string();
    let base = config_yaml(&gw, &p, "");

    // A spool directory whose parent is missing too (StateDirectory= would not create it).
    let deep = p.path("no/such/spool").display().to_string();
    p.write_config(&base.replace(&format!("dir: {spool}"), &format!("dir: {deep}")));
    both_refuse(
        "spool parent missing",
        &p,
        &[deep.clone(), "does not exist".into(), "install -d".into()],
    )
    .await;

    // A spool path that is a file.
    let file = p.path("a-file");
    std::fs::write(&file, "x").unwrap();
    let f = file.display().to_string();
    p.write_config(&base.replace(&format!("dir: {spool}"), &format!("dir: {f}")));
    both_refuse(
        "spool is a file",
        &p,
        &[f.clone(), "is not a directory".into()],
    )
    .await;

    // tls.ca_file missing, then not PEM.
    let ca = p.path("ca.pem").display().to_string();
    p.configure(&gw, &format!("tls:\n  ca_file: {ca}\n"));
    both_refuse(
        "ca_file missing",
        &p,
        &[format!("tls.ca_file {ca}"), "PEM".into()],
    )
    .await;
    std::fs::write(p.path("ca.pem"), "not a certificate\n").unwrap();
    both_refuse(
        "ca_file not PEM",
        &p,
        &[format!("tls.ca_file {ca}"), "no PEM certificate".into()],
    )
    .await;

    // A log.level typo: EnvFilter would take it as a target and log nothing.
    for typo in ["verbose", "warnn"] {
        let yaml = config_yaml(&gw, &p, &format!("log:\n  level: {typo}\n"));
        p.write_config(&yaml);
        let line = line_of(&yaml, &format!("level: {typo}"));
        both_refuse(
            typo,
            &p,
            &[
                format!("{cfg}:{line}:10: log.level: \"{typo}\" is not a log level"),
                "write a level".into(),
            ],
        )
        .await;
    }

    // An absurd duration: refused at load, naming the key and its line, not a later panic.
    let yaml = config_yaml(
        &gw,
        &p,
        "reconnect:\n  initial_delay: 1s\n  max_delay: 300000000000y\n",
    );
    p.write_config(&yaml);
    let line = line_of(&yaml, "300000000000y");
    both_refuse(
        "absurd duration",
        &p,
        &[format!(
            "{cfg}:{line}:14: reconnect.max_delay: duration \"300000000000y\" is too long"
        )],
    )
    .await;
    // One that parses but is out of its key's bounds.
    let yaml = config_yaml(
        &gw,
        &p,
        "callbacks:\n  - { topic: /v1.0/card/instances/callback, group: bot, timeout: 2h }\n",
    );
    p.write_config(&yaml);
    let line = line_of(&yaml, "timeout: 2h");
    both_refuse(
        "callback timeout",
        &p,
        &[format!(
            "{cfg}:{line}:66: callbacks[0].timeout: must be at most 1m (got 2h)"
        )],
    )
    .await;

    // A bad value on a later key of its section names that key and its own line.
    let yaml = config_yaml(
        &gw,
        &p,
        "keepalive:\n  ping_interval: 10s\n  pong_timeout: 5s\n  tcp_user_timeout: forever\n",
    );
    p.write_config(&yaml);
    let line = line_of(&yaml, "forever");
    both_refuse(
        "later key",
        &p,
        &[format!(
            "{cfg}:{line}:21: keepalive.tcp_user_timeout: invalid duration \"forever\""
        )],
    )
    .await;

    // A secret file every user can read.
    let secret = p.path("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let yaml = base.replace(
        &format!("client_secret: {SECRET}"),
        &format!("client_secret_file: {}", secret.display()),
    );
    p.write_config(&yaml);
    let s = secret.display().to_string();
    both_refuse(
        "secret file 0644",
        &p,
        &[
            "dingtalk.client_secret_file".into(),
            "readable by every user".into(),
            format!("chmod 0640 {s}"),
        ],
    )
    .await;
    // The config itself, with the secret inline, readable by every user.
    p.write_config(&base);
    std::fs::set_permissions(&p.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    both_refuse(
        "inline secret in a 0644 config",
        &p,
        &["dingtalk.client_secret".into(), format!("chmod 0640 {cfg}")],
    )
    .await;

    // Something other than a socket where a socket goes: `run` refuses to replace it (exit 1,
    // tests/cli.rs), `check-config` says so first.
    p.write_config(&base);
    std::fs::write(&p.control, "x").unwrap();
    let o = output(&["--config", &cfg, "check-config"], &[]).await;
    assert_eq!(o.code, Some(78), "{}", o.stderr);
    let c = p.control.display().to_string();
    assert!(
        o.stderr
            .contains(&format!("{c}: exists and is not a socket"))
            && o.stderr.contains("move it away"),
        "{}",
        o.stderr
    );
    std::fs::remove_file(&p.control).unwrap();

    // After all that, the same directory passes.
    let o = output(&["--config", &cfg, "check-config", "--quiet"], &[]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

#[tokio::test]
async fn a_spool_directory_still_to_be_created_passes_and_run_creates_every_file_private() {
    let gw = gateway(false).await;
    let p = Paths::new();
    std::fs::remove_dir(&p.spool).unwrap();
    p.configure(&gw, "");
    let cfg = path_str(&p.config).to_owned();
    let o = output(&["--config", &cfg, "check-config"], &[]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains(&format!(
            "# note: spool.dir {} does not exist yet: it is created at start",
            p.spool.display()
        )),
        "{}",
        o.stdout
    );
    assert!(
        !p.spool.exists(),
        "check-config created the spool directory"
    );

    // Run by hand with the loosest umask: what it creates is still private.
    let mut c = command(
        "sh",
        &[
            "-c",
            "umask 000; exec \"$0\" --config \"$1\" run",
            bin(),
            &cfg,
        ],
        &[],
    );
    c.env("RUST_LOG", "info");
    let mut d = Proc::spawn("dingtalk-streamd (umask 000)", c);
    wait_for_socket(&p.socket).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let pushed = push_acked(&gw, 2, "private").await;
    assert_eq!(pushed.len(), 2);
    d.wait_for("created the spool directory", WAIT).await;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p.spool), 0o750, "the spool directory");
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&p.spool).unwrap() {
        let path = e.unwrap().path();
        let m = mode(&path);
        assert_eq!(m & 0o077, 0, "{} is {m:o}", path.display());
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for want in ["spool.db", "spool.db-wal", "lock"] {
        assert!(seen.iter().any(|s| s == want), "{want} not in {seen:?}");
    }
    // The sockets keep socket.mode (the test config says 0600).
    assert_eq!(mode(&p.socket), 0o600);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.stderr());
}

#[tokio::test]
async fn check_config_passes_while_the_daemon_runs_and_holds_the_spool_lock() {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "");
    let cfg = path_str(&p.config).to_owned();
    let mut d = start_run(&p, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    wait_for_socket(&p.control).await;
    for args in [vec!["check-config", "--quiet"], vec!["check-config"]] {
        let mut all = vec!["--config", cfg.as_str()];
        all.extend(args.iter().copied());
        let o = output(&all, &[]).await;
        assert_eq!(o.code, Some(0), "{args:?}: {}{}", o.stdout, o.stderr);
    }
    // The daemon is undisturbed: still connected, still storing.
    push_acked(&gw, 1, "after check-config").await;
    let st = status(&p.control).await;
    assert_eq!(st["state"], "connected", "{st}");
    assert!(d.running());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.stderr());
}
