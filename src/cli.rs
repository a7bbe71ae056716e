//! The command line, with clap derive. `help` is ours rather than clap's generated one, so that
//! `dingtalk-streamd help --help` answers like every other subcommand.

use crate::config::Instance;
use clap::error::ErrorKind;
use clap::{ArgGroup, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// DingTalk Stream Mode bridge: one supervised connection per host, messages to local programs
/// over a Unix socket.
#[derive(Debug, Parser)]
#[command(
    name = "dingtalk-streamd",
    version,
    about,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// The config file [default: /etc/dingtalk-streamd/config.yml, or NAME.yml there with
    /// --instance NAME].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// One of several apps on this host: its config /etc/dingtalk-streamd/NAME.yml, sockets in
    /// /run/dingtalk-streamd/NAME/, spool /var/lib/dingtalk-streamd/NAME/ (the units
    /// dingtalk-streamd@NAME.service and .socket).
    #[arg(long, global = true, value_name = "NAME")]
    pub instance: Option<Instance>,
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
    /// 3 not running, 4 not answering within 5 s).
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
    /// Proof of receipt: when a message arrived, on which connection, its ids, and what each
    /// group did with it, from the spool (exit 0 found, 1 not found, 3 nothing readable).
    /// Asks the running daemon; when none answers, reads the spool file read-only.
    Inspect {
        /// A seq number, or a DingTalk messageId, eventId or bot msgId (a prefixed key such as
        /// `mid:...` also works). All digits is a seq unless --id is given.
        #[arg(value_name = "SEQ|ID")]
        what: String,
        /// Take WHAT as an id even when it is all digits.
        #[arg(long)]
        id: bool,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// The control socket (default: from the config, else /run/dingtalk-streamd/control.sock).
        #[arg(long)]
        control: Option<PathBuf>,
        /// The spool directory read when the daemon does not answer (default: from the config,
        /// else /var/lib/dingtalk-streamd).
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
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
    /// Print this message or the help of the given subcommand(s).
    Help {
        /// The subcommand, and its subcommand (`help group replay`).
        #[arg(value_name = "COMMAND")]
        command: Vec<String>,
    },
}

/// `group` subcommands.
#[derive(Debug, Subcommand)]
#[command(disable_help_subcommand = true)]
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
    /// Print this message or the help of the given subcommand(s).
    Help {
        /// The `group` subcommand.
        #[arg(value_name = "COMMAND")]
        command: Vec<String>,
    },
}

/// What `COMMAND... --help` prints for the subcommand at `path` (`["group", "replay"]`;
/// empty: the program); an unknown name is clap's usage error (exit 2).
pub fn help(path: &[String]) -> Result<String, clap::Error> {
    let args = std::iter::once("dingtalk-streamd")
        .chain(path.iter().map(String::as_str))
        .chain(["--help"]);
    match Cli::command().try_get_matches_from(args) {
        Err(e) if e.kind() == ErrorKind::DisplayHelp => Ok(e.render().to_string()),
        Err(e) => Err(e),
        Ok(_) => Err(Cli::command().error(
            ErrorKind::InvalidSubcommand,
            format!("no help for {:?}", path.join(" ")),
        )),
    }
}

impl Cli {
    /// The config file: `--config`, else the instance's, else the default.
    pub fn config_path(&self) -> PathBuf {
        match (&self.config, &self.instance) {
            (Some(p), _) => p.clone(),
            (None, Some(i)) => i.config_path(),
            (None, None) => crate::config::DEFAULT_CONFIG_PATH.into(),
        }
    }
}
