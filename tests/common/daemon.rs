//! The daemon under test: its files in a temp dir, a config for a fake gateway with sub-second
//! timers, and the daemon itself, either in-process through `dingtalk_streamd::run` or as the
//! real binary (a [`Proc`] whose output lines can be waited on).

use crate::common::consumer::Consumer;
use crate::common::gateway::SECRET;
use crate::common::process::Proc;
use crate::common::status::{status, status_until};
use crate::common::wait::{WAIT, wait_for_socket};
use dingtalk_streamd::config::Config;
use dingtalk_streamd_sim::FakeGateway;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio_util::sync::CancellationToken;

/// Paths of one daemon instance in a temp dir.
pub struct Paths {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub control: PathBuf,
    pub spool: PathBuf,
}

impl Paths {
    pub fn new() -> Paths {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).expect("spool dir");
        Paths {
            config: dir.path().join("config.yml"),
            socket: dir.path().join("stream.sock"),
            control: dir.path().join("control.sock"),
            spool,
            dir,
        }
    }

    /// A path in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `yaml` as the config, write-then-rename as an editor would: a daemon that
    /// reloads never reads half a file. Mode 0600: the config holds the secret inline, and a
    /// config others can read is refused.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.config.with_extension("tmp");
        write_private(&tmp, yaml);
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// Writes [`config_yaml`] for `gw` with `extra`.
    pub fn configure(&self, gw: &FakeGateway, extra: &str) {
        self.write_config(&config_yaml(gw, self, extra));
    }
}

/// Writes `text` to `path` with mode 0600 (a file holding a secret, as the daemon requires:
/// readable by others is refused), replacing what was there.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A config for `gw` with fast timers; `extra` is appended (top-level YAML keys).
pub fn config_yaml(gw: &FakeGateway, p: &Paths, extra: &str) -> String {
    config_yaml_with_spool(gw, p, "", extra)
}

/// [`config_yaml`] with `spool_keys` (indented lines) under `spool:` after its `dir`.
pub fn config_yaml_with_spool(
    gw: &FakeGateway,
    p: &Paths,
    spool_keys: &str,
    extra: &str,
) -> String {
    let tls = match gw.ca_pem() {
        Some(_) => {
            let ca = p.path("ca.pem");
            gw.write_ca_pem(&ca).expect("write ca");
            format!("tls:\n  ca_file: {}\n", ca.display())
        }
        None => String::new(),
    };
    let has = |k: &str| extra.lines().any(|l| l.starts_with(k));
    let mut y = format!(
        "dingtalk:\n  client_id: {}\n  client_secret: {SECRET}\n  open_url: {}\n{tls}socket:\n  path: {}\n  mode: \"0600\"\ncontrol:\n  path: {}\nspool:\n  dir: {}\n{spool_keys}",
        gw.config().client_id,
        gw.open_url(),
        p.socket.display(),
        p.control.display(),
        p.spool.display(),
    );
    if !has("keepalive:") {
        y += "keepalive:\n  ping_interval: 300ms\n  pong_timeout: 200ms\n  tcp_keepalive_idle: 1s\n  tcp_keepalive_interval: 1s\n  tcp_keepalive_count: 2\n  tcp_user_timeout: 2s\n";
    }
    if !has("reconnect:") {
        y += "reconnect:\n  initial_delay: 50ms\n  max_delay: 400ms\n  stable_after: 1s\n  connect_timeout: 2s\n";
    }
    if !has("log:") {
        y += "log:\n  level: info\n";
    }
    y += extra;
    y
}

/// A `keepalive:` section with these timers (TCP keepalive 1 s × 2, TCP_USER_TIMEOUT 3 s).
pub fn keepalive(ping: &str, pong: &str) -> String {
    format!(
        "keepalive:\n  ping_interval: {ping}\n  pong_timeout: {pong}\n  tcp_keepalive_idle: 1s\n  tcp_keepalive_interval: 1s\n  tcp_keepalive_count: 2\n  tcp_user_timeout: 3s\n"
    )
}

/// A `reconnect:` section with these timers (stable after 1 s).
pub fn reconnect(initial: &str, max: &str, connect_timeout: &str) -> String {
    format!(
        "reconnect:\n  initial_delay: {initial}\n  max_delay: {max}\n  stable_after: 1s\n  connect_timeout: {connect_timeout}\n"
    )
}

/// The daemon running in-process through the library's `run`.
pub struct Daemon {
    pub paths: Paths,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), dingtalk_streamd::Error>>,
}

impl Daemon {
    /// Writes the config, starts `run`, and waits until the consumer socket accepts.
    pub async fn start(gw: &FakeGateway, extra: &str) -> Daemon {
        Daemon::start_at(Paths::new(), gw, extra).await
    }

    /// Same, reusing existing paths (a restart over the same spool).
    pub async fn start_at(paths: Paths, gw: &FakeGateway, extra: &str) -> Daemon {
        let yaml = config_yaml(gw, &paths, extra);
        Daemon::start_yaml(paths, &yaml).await
    }

    /// Same, with extra keys under `spool:`.
    pub async fn start_with_spool(gw: &FakeGateway, spool_keys: &str, extra: &str) -> Daemon {
        let paths = Paths::new();
        let yaml = config_yaml_with_spool(gw, &paths, spool_keys, extra);
        Daemon::start_yaml(paths, &yaml).await
    }

    /// Starts `run` on `yaml` as the config at `paths`; waits until the consumer socket accepts.
    pub async fn start_yaml(paths: Paths, yaml: &str) -> Daemon {
        paths.write_config(yaml);
        let loaded = Config::load(&paths.config).expect("config loads");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(dingtalk_streamd::run(loaded, shutdown.clone()));
        wait_for_socket(&paths.socket).await;
        Daemon {
            paths,
            shutdown,
            task,
        }
    }

    /// Stops it and returns its result and paths.
    pub async fn stop(self) -> (Result<(), dingtalk_streamd::Error>, Paths) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task");
        (r, self.paths)
    }

    pub async fn tap(&self) -> Consumer {
        Consumer::tap(&self.paths.socket).await
    }

    pub async fn member(&self, group: &str) -> Consumer {
        Consumer::member(&self.paths.socket, group).await
    }

    /// The status document from the control socket.
    pub async fn status(&self) -> Value {
        status(&self.paths.control).await
    }

    /// Polls status until `pred` holds (within [`WAIT`]).
    pub async fn status_until(&self, what: &str, pred: impl FnMut(&Value) -> bool) -> Value {
        status_until(&self.paths.control, what, pred).await
    }
}

/// The daemon binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dingtalk-streamd")
}

/// The simulator binary. It is another package of the workspace, so Cargo only builds it
/// for `cargo test --workspace` (what `scripts/test` runs), next to the daemon's binary.
pub fn sim_bin() -> PathBuf {
    let p = Path::new(bin()).with_file_name("dingtalk-streamd-sim");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test does)",
        p.display()
    );
    p
}

/// A script in tests/support.
pub fn support(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script)
}

/// Removes what the test runner's environment could leak into the daemon: log filters,
/// systemd's variables, proxies, the test hooks. Tests set what they need afterwards.
pub fn clean_env(c: &mut Command) -> &mut Command {
    for k in [
        "RUST_LOG",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "CREDENTIALS_DIRECTORY",
        "DINGTALK_STREAMD_TEST_WEDGE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        c.env_remove(k);
    }
    c
}

/// `program args` with a clean environment plus `envs`.
pub fn command(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Command {
    let mut c = Command::new(program);
    clean_env(&mut c).args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

/// The daemon binary with `args`.
pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
    Proc::spawn("dingtalk-streamd", command(bin(), args, envs))
}

/// The daemon binary with `--config CONFIG run`.
pub fn spawn_run(config: &Path, envs: &[(&str, &str)]) -> Proc {
    let config = config.to_str().expect("utf-8 config path");
    spawn(&["--config", config, "run"], envs)
}

/// [`spawn_run`] on `paths`, then waits until the consumer socket accepts.
pub async fn start_run(paths: &Paths, envs: &[(&str, &str)]) -> Proc {
    let p = spawn_run(&paths.config, envs);
    wait_for_socket(&paths.socket).await;
    p
}

/// What a short-lived command printed and how it ended.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` to completion within [`WAIT`].
pub async fn output(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut p = spawn(args, envs);
    let st = p.wait_exit(WAIT).await;
    Output {
        code: st.code(),
        stdout: p.stdout(),
        stderr: p.stderr(),
    }
}

/// The daemon binary's `run` on the config at `paths`, to its exit within [`WAIT`].
pub async fn run_to_exit(paths: &Paths) -> Output {
    let config = paths.config.to_str().expect("utf-8 config path");
    output(&["--config", config, "run"], &[]).await
}

/// The value of `key=...` in a tracing text line (up to the next space).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest).trim_matches('"'))
}
