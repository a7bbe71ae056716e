//! Tests that need root-only machinery (mount namespaces with a tmpfs, network namespaces):
//! whether it is there, how to run a script in a private mount namespace, and the skip rule.

use std::process::{Command, Stdio};

/// Set to 1 (CI runs as root and sets it) to make a skipped mount-namespace test a failure.
pub const REQUIRE_PRIVILEGED: &str = "DTS_REQUIRE_PRIVILEGED";
/// Set to 1 (CI runs as root and sets it) to make a skipped network-namespace test a failure.
pub const REQUIRE_NETNS: &str = "DTS_REQUIRE_NETNS";

/// A test that cannot have its machinery here: skipped with a message, or a failure when
/// the environment variable `require` is 1 (so such tests can never pass in CI without
/// running).
pub fn skip_or_fail(require: &str, test: &str, why: &str) {
    assert!(
        std::env::var(require).map_or(true, |v| v != "1"),
        "{test} cannot run: {why} ({require}=1)"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// Whether the tests run as root (`/proc/self` belongs to the effective uid).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// `sh -c script` in a private mount namespace (its mounts never reach the host).
pub fn in_mount_namespace(script: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", script]);
    c
}

/// `Ok` when a private mount namespace with a tmpfs can be had here; why not otherwise.
pub fn mount_namespace_with_tmpfs() -> Result<(), String> {
    if !is_root() {
        return Err("not root: needs `unshare --mount` and a tmpfs mount".into());
    }
    let ok = in_mount_namespace("mount -t tmpfs -o size=64k tmpfs /mnt")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err("`unshare --mount` with a tmpfs mount is not permitted".into())
    }
}
