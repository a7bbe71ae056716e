//! The command line, with clap derive.

use clap::{ArgGroup, Parser, Subcommand};
use std::path::PathBuf;

/// DingTalk Stream Mode bridge: one supervised connection per host, messages to local programs
/// over a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "dingtalk-streamd", version, about)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the config and print the effective config, secrets redacted (exit 0 or 78).
    CheckConfig {
        /// Print nothing on success (errors still go to stderr); for `ExecReload=`, so each
        /// reload does not copy the whole config into the journal.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Ask the running daemon over the control socket (exit 0 connected, 1 not connected,
    /// 3 not running, 4 running but not answering).
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// The control socket (default: from the config, else /run/dingtalk-streamd/control.sock).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Read messages as a consumer: a tap, or a member of a group (which acks what it prints);
    /// with --peek, show a group's backlog without taking or acking anything.
    Tail {
        /// Join this consumer group instead of tapping.
        #[arg(long)]
        group: Option<String>,
        /// Print the raw NDJSON lines.
        #[arg(long)]
        json: bool,
        /// The consumer socket (default: from the config, else /run/dingtalk-streamd/stream.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Show the group's backlog (messages after its cursor not yet acked) and exit; asks the
        /// control socket (exit 0, 1 unknown group, 3 not running, 4 not answering).
        #[arg(long, requires = "group")]
        peek: bool,
        /// With --peek: show at most this many messages (the answer is also bounded to 4 MiB).
        #[arg(long, requires = "peek", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// With --peek: the control socket (default: from the config, else
        /// /run/dingtalk-streamd/control.sock).
        #[arg(long, requires = "peek")]
        control: Option<PathBuf>,
    },
    /// Consumer groups: list, remove an ad-hoc group, replay messages to a group (exit 0 done,
    /// 1 refused, 3 not running, 4 not answering).
    Group {
        /// Which.
        #[command(subcommand)]
        command: GroupCommand,
        /// The control socket (default: from the config, else /run/dingtalk-streamd/control.sock).
        #[arg(long, global = true)]
        control: Option<PathBuf>,
    },
}

/// `group` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group, configured or ad-hoc: members, backlog, in flight, parked, expiry.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an ad-hoc group and release its backlog. Refused for a group listed in
    /// `groups:` and for a group with connected members.
    Rm {
        /// The group.
        group: String,
    },
    /// Give a group messages again: its parked ones, or every one from SEQ still in the spool.
    /// Connected members get them; their delivery counts restart.
    #[command(group(ArgGroup::new("what").required(true).args(["parked", "from"])))]
    Replay {
        /// The group.
        group: String,
        /// Its parked messages.
        #[arg(long)]
        parked: bool,
        /// Every message from this seq on that is still in the spool.
        #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..))]
        from: Option<u64>,
    },
}
