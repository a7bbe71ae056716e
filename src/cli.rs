//! The command line, with clap derive.

use clap::{Parser, Subcommand};
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
    /// 3 not running).
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// The control socket (default: from the config, else /run/dingtalk-streamd/control.sock).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Read messages as a consumer: a tap, or a member of a group (which acks what it prints).
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
    },
}
