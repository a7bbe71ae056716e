//! A true black hole below TCP: two network namespaces joined by a veth pair (198.18.0.0/15,
//! the RFC 2544 benchmarking range, so nothing leaves the pair), the fake gateway
//! (`dingtalk-streamd-sim`) in one, the daemon binary in the other, and an nft (or iptables)
//! rule that drops every packet to the gateway's port. Shows that the pong deadline ends the
//! connection, and, with the daemon's pings effectively off, that TCP_USER_TIMEOUT alone does.
//!
//! Needs root, `ip netns` and nft or iptables. Without them each test says so and passes as
//! skipped, unless `DTS_REQUIRE_NETNS=1` (set by CI, which runs as root) makes that a failure.
//! Namespaces and processes are removed by a guard even when an assertion fails.

mod common;

use common::privileged::{REQUIRE_NETNS, is_root, skip_or_fail};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The gateway's port inside its namespace.
const PORT: u16 = 8443;

/// Reports a skip (or fails when namespaces are required).
fn skip(why: &str) {
    skip_or_fail(REQUIRE_NETNS, "netns test", why);
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} → {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn which(tool: &str) -> bool {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join(tool).exists())
}

/// Which firewall drops the packets.
#[derive(Clone, Copy, Debug)]
enum Firewall {
    Nft,
    Iptables,
}

/// Two namespaces and a veth pair; deleted on drop.
struct Net {
    client: String,
    server: String,
    client_ip: String,
    server_ip: String,
    firewall: Firewall,
    created: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            // Deleting a namespace also deletes its end of the veth pair, and so the pair.
            if let Err(e) = run(&["ip", "netns", "del", &ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

impl Net {
    /// Sets up the pair, or `None` (after `skip`) when this machine cannot.
    fn setup(index: u8) -> Option<Net> {
        if !is_root() {
            skip("not root: network namespaces need CAP_SYS_ADMIN");
            return None;
        }
        if !which("ip") {
            skip("`ip` (iproute2) is not installed");
            return None;
        }
        let firewall = if which("nft") {
            Firewall::Nft
        } else if which("iptables") {
            Firewall::Iptables
        } else {
            skip("neither nft nor iptables is installed");
            return None;
        };
        let tag = format!("{}{index}", std::process::id() % 100_000);
        let base = 4 * u16::from(index);
        let mut net = Net {
            client: format!("dtsc{tag}"),
            server: format!("dtss{tag}"),
            client_ip: format!("198.18.0.{}", base + 1),
            server_ip: format!("198.18.0.{}", base + 2),
            firewall,
            created: Vec::new(),
        };
        if let Err(e) = run(&["ip", "netns", "add", &net.client]) {
            skip(&format!("cannot create a network namespace: {e}"));
            return None;
        }
        net.created.push(net.client.clone());
        let (va, vb) = (format!("dtva{tag}"), format!("dtvb{tag}"));
        let (client, server) = (net.client.clone(), net.server.clone());
        let client_cidr = format!("{}/30", net.client_ip);
        let server_cidr = format!("{}/30", net.server_ip);
        let steps: [&[&str]; 10] = [
            &["ip", "netns", "add", &server],
            &[
                "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
            ],
            &["ip", "link", "set", &va, "netns", &client],
            &["ip", "link", "set", &vb, "netns", &server],
            &["ip", "-n", &client, "addr", "add", &client_cidr, "dev", &va],
            &["ip", "-n", &server, "addr", "add", &server_cidr, "dev", &vb],
            &["ip", "-n", &client, "link", "set", &va, "up"],
            &["ip", "-n", &server, "link", "set", &vb, "up"],
            &["ip", "-n", &client, "link", "set", "lo", "up"],
            &["ip", "-n", &server, "link", "set", "lo", "up"],
        ];
        for (i, step) in steps.into_iter().enumerate() {
            if let Err(e) = run(step) {
                if i == 0 {
                    skip(&format!("cannot create a second network namespace: {e}"));
                    return None;
                }
                // The veth might be left in the root namespace if it never moved.
                let _ = run(&["ip", "link", "del", &va]);
                panic!("network setup failed: {e}");
            }
            if i == 0 {
                net.created.push(server.clone());
            }
        }
        Some(net)
    }

    /// `program args` in namespace `ns`, with a clean environment.
    fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Command {
        command(
            "ip",
            &[&["netns", "exec", ns, program][..], args].concat(),
            &[],
        )
    }

    /// Drops every packet arriving at the gateway's port, in the gateway's namespace.
    fn black_hole(&self, on: bool) {
        let ns = self.server.as_str();
        let port = PORT.to_string();
        let cmds: Vec<Vec<&str>> = match (self.firewall, on) {
            (Firewall::Nft, true) => vec![
                vec![
                    "ip", "netns", "exec", ns, "nft", "add", "table", "inet", "dts_bh",
                ],
                vec![
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    "dts_bh",
                    "in",
                    "{ type filter hook input priority 0 ; policy accept ; }",
                ],
                vec![
                    "ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "dts_bh", "in", "tcp",
                    "dport", &port, "drop",
                ],
            ],
            (Firewall::Nft, false) => vec![vec![
                "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "dts_bh",
            ]],
            (Firewall::Iptables, true) => {
                vec![vec![
                    "ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport",
                    &port, "-j", "DROP",
                ]]
            }
            (Firewall::Iptables, false) => {
                vec![vec![
                    "ip", "netns", "exec", ns, "iptables", "-D", "INPUT", "-p", "tcp", "--dport",
                    &port, "-j", "DROP",
                ]]
            }
        };
        for c in cmds {
            // A fault that silently failed to apply would make the test meaningless.
            run(&c).unwrap_or_else(|e| panic!("{:?} black hole {on}: {e}", self.firewall));
        }
    }
}

/// The gateway in the server namespace (TLS: plain ws:// is only allowed to loopback).
fn start_gateway(net: &Net, dir: &Path, server_pings: Option<&str>) -> Proc {
    let sim = sim_bin();
    let c = net.exec(
        &net.server,
        sim.to_str().expect("utf-8 path"),
        &[
            "--listen",
            &format!("{}:{PORT}", net.server_ip),
            "--state-dir",
            dir.to_str().expect("utf-8 path"),
            "--client-id",
            "sim-client",
            "--client-secret",
            SECRET,
            "--ping-interval",
            server_pings.unwrap_or("off"),
            "--redeliver-after",
            "off",
        ],
    );
    Proc::spawn("gateway", c)
}

fn daemon_config(net: &Net, dir: &Path, keepalive: &str) -> PathBuf {
    let yaml = format!(
        "dingtalk:\n  client_id: sim-client\n  client_secret: {SECRET}\n  open_url: https://{}:{PORT}/v1.0/gateway/connections/open\n\
         tls:\n  ca_file: {}\nsocket:\n  path: {}\ncontrol:\n  path: {}\nspool:\n  dir: {}\n{keepalive}\
         reconnect:\n  initial_delay: 100ms\n  max_delay: 1s\n  stable_after: 1s\n  connect_timeout: 1s\nlog:\n  level: info\n",
        net.server_ip,
        dir.join("ca.pem").display(),
        dir.join("stream.sock").display(),
        dir.join("control.sock").display(),
        dir.join("spool").display(),
    );
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    let path = dir.join("config.yml");
    write_private(&path, &yaml);
    path
}

fn start_daemon(net: &Net, config: &Path) -> Proc {
    let config = config.to_str().expect("utf-8 path");
    let c = net.exec(&net.client, bin(), &["--config", config, "run"]);
    Proc::spawn("daemon", c)
}

/// Connects, black-holes the gateway, and returns the "connection lost" line with how long
/// after the drop it came; then checks the reconnect attempts and the recovery.
async fn black_hole_case(
    index: u8,
    keepalive: &str,
    server_pings: Option<&str>,
    deadline: Duration,
) -> Option<(Duration, String)> {
    let net = Net::setup(index)?;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(&net, dir.path(), server_pings);
    gw.wait_for("open_url", WAIT).await;
    let config = daemon_config(&net, dir.path(), keepalive);
    let daemon = start_daemon(&net, &config);
    daemon.wait_for("connected to DingTalk", WAIT).await;
    let control = dir.path().join("control.sock");
    let st = status_until(&control, "connected", |s| s["state"] == "connected").await;
    assert!(
        st["link"]["socket"]["user_timeout_ms"].as_u64().is_some(),
        "{st}"
    );

    let mut from = daemon.len();
    net.black_hole(true);
    let dropped_at = Instant::now();
    let lost = daemon
        .wait_line(&mut from, "connection lost", deadline + WAIT)
        .await;
    let took = lost.at - dropped_at;
    assert!(
        took <= deadline,
        "dead link found after {took:?}, bound {deadline:?}: {}",
        lost.text
    );
    // The supervisor goes on trying, each attempt cut at connect_timeout (1 s) in the hole.
    daemon
        .wait_line(
            &mut from,
            "connecting to DingTalk",
            Duration::from_millis(100) + SLACK,
        )
        .await;
    let failed = daemon
        .wait_line(
            &mut from,
            "connection attempt failed",
            Duration::from_secs(1) + SLACK * 2,
        )
        .await;
    assert_eq!(
        field(&failed.text, "cause"),
        Some("ticket_timeout"),
        "{}",
        failed.text
    );
    let st = status_until(&control, "not connected", |s| s["state"] != "connected").await;
    assert!(st["link"]["last_cause"].is_string(), "{st}");

    net.black_hole(false);
    daemon
        .wait_line(
            &mut from,
            "connected to DingTalk",
            Duration::from_secs(2) + SLACK * 2,
        )
        .await;
    let text = lost.text.clone();
    drop(daemon);
    drop(gw);
    drop(net);
    Some((took, text))
}

/// The pong deadline ends a black-holed connection within ping_interval + pong_timeout + 1 s.
#[tokio::test]
async fn black_hole_is_found_by_the_pong_deadline() {
    let (ping, pong) = (Duration::from_millis(500), Duration::from_millis(300));
    // TCP_USER_TIMEOUT well above the pong deadline, so the pong deadline is what fires.
    let keepalive = "keepalive:\n  ping_interval: 500ms\n  pong_timeout: 300ms\n  tcp_keepalive_idle: 5s\n  tcp_keepalive_interval: 1s\n  tcp_keepalive_count: 3\n  tcp_user_timeout: 8s\n";
    let Some((took, line)) = black_hole_case(0, keepalive, None, ping + pong + SLACK).await else {
        return;
    };
    assert_eq!(field(&line, "cause"), Some("pong_timeout"), "{line}");
    eprintln!(
        "black hole: pong_timeout after {took:?} (bound {:?})",
        ping + pong + SLACK
    );
}

/// With the daemon's pings effectively off (1 h) and the gateway's SYSTEM pings still arriving
/// (a one-way black hole: the daemon's ACKs are dropped), only the kernel can tell: the ACK
/// frames stay unacknowledged and TCP_USER_TIMEOUT (3 s) ends the connection with ETIMEDOUT.
/// SO_KEEPALIVE cannot help here (it only probes an idle socket) and the pong deadline never
/// arms.
#[tokio::test]
async fn black_hole_is_found_by_tcp_user_timeout_alone() {
    let user_timeout = Duration::from_secs(3);
    let keepalive = "keepalive:\n  ping_interval: 1h\n  pong_timeout: 59m\n  tcp_keepalive_idle: 1s\n  tcp_keepalive_interval: 1s\n  tcp_keepalive_count: 9\n  tcp_user_timeout: 3s\n";
    // Server pings every 300 ms: the first ACK after the drop starts the retransmissions.
    let bound = user_timeout + Duration::from_millis(300) + SLACK * 2;
    let Some((took, line)) = black_hole_case(1, keepalive, Some("300ms"), bound).await else {
        return;
    };
    assert_eq!(field(&line, "cause"), Some("io_error"), "{line}");
    assert!(
        line.contains("timed out"),
        "expected ETIMEDOUT from TCP_USER_TIMEOUT: {line}"
    );
    assert!(
        took >= user_timeout - Duration::from_millis(300),
        "ended after {took:?}, before TCP_USER_TIMEOUT could fire"
    );
    eprintln!(
        "black hole with pings off: io_error (TCP_USER_TIMEOUT) after {took:?} (bound {bound:?})"
    );
}
