//! `--instance NAME` through the real binary: the shorthand for an instance's config
//! (`/etc/dingtalk-streamd/NAME.yml`), sockets (`/run/dingtalk-streamd/NAME/`) and spool
//! (`/var/lib/dingtalk-streamd/NAME/`) in every command, paths a config sets itself kept, and
//! names that could escape those directories refused. (Two instances under the real systemd:
//! `scripts/systemd-smoke-instances`.)

mod common;

use common::*;

/// An instance name no host has.
fn name() -> String {
    format!("dts-test-{}", std::process::id())
}

#[tokio::test]
async fn every_command_uses_the_instances_paths() {
    let n = name();
    let control = format!("/run/dingtalk-streamd/{n}/control.sock");
    for args in [
        vec!["status"],
        vec!["group", "list"],
        vec!["tail", "--group", "g", "--peek"],
    ] {
        let mut all = vec!["--instance", n.as_str()];
        all.extend(args.iter().copied());
        let o = output(&all, &[]).await;
        assert_eq!(o.code, Some(3), "{all:?}: {}", o.stderr);
        assert!(o.stderr.contains(&control), "{all:?}: {}", o.stderr);
    }
    let o = output(&["--instance", &n, "tail"], &[]).await;
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(
        o.stderr
            .contains(&format!("/run/dingtalk-streamd/{n}/stream.sock")),
        "{}",
        o.stderr
    );
    let o = output(&["--instance", &n, "inspect", "msgX"], &[]).await;
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(o.stderr.contains(&control), "{}", o.stderr);
    assert!(
        o.stderr.contains(&format!("/var/lib/dingtalk-streamd/{n}")),
        "{}",
        o.stderr
    );
    for cmd in ["check-config", "run"] {
        let o = output(&["--instance", &n, cmd], &[]).await;
        assert_eq!(o.code, Some(78), "{cmd}: {}", o.stderr);
        assert!(
            o.stderr.contains(&format!("/etc/dingtalk-streamd/{n}.yml")),
            "{cmd}: {}",
            o.stderr
        );
    }
}

#[tokio::test]
async fn an_instance_config_gets_the_instance_paths_unless_it_sets_its_own() {
    let p = Paths::new();
    let base = "dingtalk:\n  client_id: ding-a\n  client_secret: s3cr3t-a\n";
    p.write_config(base);
    let cfg = p.config.to_str().expect("utf-8");
    // The instance's spool directory is checked like `run` would: without the package (no
    // /var/lib/dingtalk-streamd) it cannot be created, and the error names the instance's path.
    let o = output(
        &["--config", cfg, "--instance", "app-a", "check-config"],
        &[],
    )
    .await;
    let state = std::path::Path::new("/var/lib/dingtalk-streamd");
    let creatable =
        state.is_dir() && nix::unistd::access(state, nix::unistd::AccessFlags::W_OK).is_ok();
    if creatable {
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert!(
            o.stdout.contains("dir: /var/lib/dingtalk-streamd/app-a"),
            "{}",
            o.stdout
        );
    } else {
        assert_eq!(o.code, Some(78), "{}", o.stderr);
        assert!(
            o.stderr.contains("/var/lib/dingtalk-streamd/app-a"),
            "{}",
            o.stderr
        );
    }
    p.write_config(&format!("{base}spool:\n  dir: {}\n", p.spool.display()));
    let o = output(
        &["--config", cfg, "--instance", "app-a", "check-config"],
        &[],
    )
    .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for want in [
        "path: /run/dingtalk-streamd/app-a/stream.sock",
        "path: /run/dingtalk-streamd/app-a/control.sock",
    ] {
        assert!(o.stdout.contains(want), "{want} not in:\n{}", o.stdout);
    }
    assert!(!o.stdout.contains("s3cr3t-a"), "secret printed");
    p.write_config(&format!(
        "{base}socket:\n  path: {}\nspool:\n  dir: {}\n",
        p.socket.display(),
        p.spool.display()
    ));
    let o = output(
        &["--config", cfg, "--instance", "app-a", "check-config"],
        &[],
    )
    .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains(&format!("path: {}", p.socket.display())),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(&format!("dir: {}", p.spool.display())),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("path: /run/dingtalk-streamd/app-a/control.sock"),
        "{}",
        o.stdout
    );
}

#[tokio::test]
async fn names_that_are_not_plain_file_names_are_refused() {
    for bad in ["../etc", "a/b", ".hidden", "", "a b"] {
        let o = output(&["--instance", bad, "status"], &[]).await;
        assert_eq!(o.code, Some(2), "{bad:?}: {}", o.stderr);
        assert!(
            o.stderr.contains("--instance") && o.stderr.contains("instance name"),
            "{bad:?}: {}",
            o.stderr
        );
    }
}
