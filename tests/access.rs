//! Who may talk to the daemon: when it binds the consumer and control sockets itself they are
//! `socket.mode` (0660) and belong to its group, so the kernel refuses a user outside that
//! group and lets a member of it in. The other users are throwaway ids (65534, no entry
//! needed), taken with `setpriv` from util-linux in a child; this needs root (CI runs as
//! root), and is skipped with a message elsewhere unless DTS_REQUIRE_PRIVILEGED=1.

mod common;

use common::privileged::{REQUIRE_PRIVILEGED, is_root, skip_or_fail};
use common::*;
use nix::sys::signal::Signal;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// An unprivileged uid and gid that need no passwd entry.
const OUTSIDER: &str = "65534";

/// The daemon binary with `args`, run as uid/gid 65534 with exactly the supplementary `groups`.
fn as_other_user(groups: Option<u32>, args: &[&str]) -> Proc {
    let mut c = command("setpriv", &[], &[]);
    c.args(["--reuid", OUTSIDER, "--regid", OUTSIDER]);
    match groups {
        Some(g) => c.arg(format!("--groups={g}")),
        None => c.arg("--clear-groups"),
    };
    c.arg("--").arg(bin()).args(args);
    Proc::spawn("dingtalk-streamd as another user", c)
}

#[tokio::test]
async fn the_sockets_are_0660_and_a_user_outside_their_group_is_refused_by_the_kernel() {
    if !is_root() {
        return skip_or_fail(
            REQUIRE_PRIVILEGED,
            "the_sockets_are_0660_and_a_user_outside_their_group_is_refused_by_the_kernel",
            "needs root to run a client as another user",
        );
    }
    if which("setpriv").is_none() {
        return skip_or_fail(
            REQUIRE_PRIVILEGED,
            "the_sockets_are_0660_and_a_user_outside_their_group_is_refused_by_the_kernel",
            "setpriv (util-linux) is not installed",
        );
    }
    let gw = gateway(false).await;
    let p = Paths::new();
    // Others may pass through the directory (as through /run/dingtalk-streamd), so only the
    // sockets' own modes decide.
    std::fs::set_permissions(p.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let yaml = config_yaml(&gw, &p, "").replace("  mode: \"0600\"\n", "  mode: \"0660\"\n");
    p.write_config(&yaml);
    let mut d = start_run(&p, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    wait_for_socket(&p.control).await;
    let mut gid = None;
    for sock in [&p.socket, &p.control] {
        let m = std::fs::metadata(sock).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o660, "{}", sock.display());
        gid = Some(m.gid());
    }
    let gid = gid.unwrap();
    let control = p.control.to_str().unwrap();
    let socket = p.socket.to_str().unwrap();

    // Outside the group: the kernel refuses both connects (EACCES), and the CLI says so.
    let mut st = as_other_user(None, &["status", "--control", control]);
    let code = st.wait_exit(WAIT).await.code();
    let err = st.stderr();
    assert_eq!(code, Some(4), "{err}");
    assert!(
        err.contains("Permission denied") && err.contains(control),
        "{err}"
    );
    assert!(err.contains("dingtalk-streamd-clients"), "{err}");
    let mut tail = as_other_user(None, &["tail", "--socket", socket]);
    let code = tail.wait_exit(WAIT).await.code();
    let err = tail.stderr();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    let st = status(&p.control).await;
    assert_eq!(st["consumers"]["connected"], 0, "nobody got in: {st}");

    // In the sockets' group: let in.
    let mut st = as_other_user(Some(gid), &["status", "--control", control, "--json"]);
    assert_eq!(st.wait_exit(WAIT).await.code(), Some(0), "{}", st.text());
    let mut tail = as_other_user(Some(gid), &["tail", "--socket", socket, "--json"]);
    let (pushed, _) = {
        let mut c = Consumer::tap(&p.socket).await;
        status_until(&p.control, "both taps", |s| s["consumers"]["taps"] == 2).await;
        c.first_push_through(&gw, "to a member of the group").await
    };
    tail.wait_for(&pushed.message_id, WAIT).await;
    tail.signal(Signal::SIGTERM);
    let _ = tail.wait_exit(WAIT).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.stderr());
}

/// `program`'s path, when it is installed.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
