//! The `dingtalk-streamd` binary: parse the command line, load the config, set up logging, run,
//! and map the outcome to an exit code (0 clean stop, 78 config/credentials/spool, 1 other).

use clap::Parser;
use dingtalk_streamd::cli::{self, Cli, Command, GroupCommand};
use dingtalk_streamd::config::{self, Config, ConfigError, Instance};
use dingtalk_streamd::{control, logging, notify};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// EX_CONFIG from sysexits.h: systemd's `RestartPreventExitStatus=78` stops restart loops.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dingtalk-streamd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config = cli.config_path();
    let instance = cli.instance.clone();
    let local = || LocalPaths::of(&config, instance.as_ref());
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(run(&config, instance.as_ref())),
        Command::CheckConfig { quiet } => check_config(&config, instance.as_ref(), quiet),
        Command::Status { json, control } => {
            let path = control.unwrap_or_else(|| local().control);
            runtime.block_on(control::client::status(&path, json))
        }
        Command::Tail {
            group: Some(group),
            json,
            peek: true,
            limit,
            control,
            ..
        } => {
            let path = control.unwrap_or_else(|| local().control);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            runtime.block_on(control::group_client::peek(&path, &group, limit, json))
        }
        Command::Tail {
            group,
            json,
            socket,
            ..
        } => {
            let path = socket.unwrap_or_else(|| local().socket);
            runtime.block_on(control::client::tail(&path, group.as_deref(), json))
        }
        Command::Inspect {
            what,
            id,
            json,
            control,
            spool,
        } => {
            let paths = local();
            let query = match what.parse::<u64>() {
                Ok(seq) if !id => control::inspect::Query::Seq(seq),
                _ => control::inspect::Query::Id(what),
            };
            let control = control.unwrap_or(paths.control);
            let spool = spool.unwrap_or(paths.spool);
            runtime.block_on(control::inspect::inspect(&control, &spool, query, json))
        }
        Command::Help { command } => print_help(&command),
        Command::Group { command, control } => {
            let path = control.unwrap_or_else(|| local().control);
            runtime.block_on(async {
                match command {
                    GroupCommand::List { json } => control::group_client::list(&path, json).await,
                    GroupCommand::Rm { group } => control::group_client::rm(&path, &group).await,
                    GroupCommand::Replay {
                        group,
                        parked,
                        from,
                    } => control::group_client::replay(&path, &group, parked, from).await,
                    GroupCommand::Help { command } => {
                        let path: Vec<String> =
                            std::iter::once("group".to_owned()).chain(command).collect();
                        print_help(&path)
                    }
                }
            })
        }
    };
    ExitCode::from(code)
}

/// `help [COMMAND...]`: what `--help` prints for that command (exit 0), or clap's usage error
/// (exit 2).
fn print_help(path: &[String]) -> u8 {
    match cli::help(path) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            let _ = e.print();
            2
        }
    }
}

/// The paths the client commands use when not given.
struct LocalPaths {
    socket: PathBuf,
    control: PathBuf,
    spool: PathBuf,
}

impl LocalPaths {
    /// From the config when it is readable (an operator outside the daemon's group cannot read
    /// it), else the instance's paths, else the defaults.
    fn of(config: &Path, instance: Option<&Instance>) -> LocalPaths {
        std::fs::read_to_string(config)
            .ok()
            .and_then(|t| Config::parse_as(&t, config, instance).ok())
            .map(|c| LocalPaths {
                socket: c.socket.path,
                control: c.control.path,
                spool: c.spool.dir,
            })
            .unwrap_or_else(|| match instance {
                Some(i) => LocalPaths {
                    socket: i.socket_path(),
                    control: i.control_path(),
                    spool: i.spool_dir(),
                },
                None => LocalPaths {
                    socket: config::DEFAULT_SOCKET_PATH.into(),
                    control: config::DEFAULT_CONTROL_PATH.into(),
                    spool: config::DEFAULT_SPOOL_DIR.into(),
                },
            })
    }
}

/// `check-config`: the config, its secrets, and every other check `run` makes before it
/// connects (trust store, spool directory, socket paths), without the spool's lock, so it
/// works while the daemon runs (`ExecReload=`). Exit 0, or 78 with what to fix.
fn check_config(path: &Path, instance: Option<&Instance>, quiet: bool) -> u8 {
    let checked = Config::load_as(path, instance)
        .map_err(dingtalk_streamd::Error::from)
        .and_then(|l| dingtalk_streamd::daemon::preflight(&l).map(|notes| (l, notes)));
    match checked {
        Ok((l, notes)) => {
            if quiet {
                return 0;
            }
            let source = match &l.secret_source {
                config::SecretSource::Inline => "dingtalk.client_secret (inline)".to_string(),
                config::SecretSource::File(p) => format!("file {}", p.display()),
                config::SecretSource::Credential(p) => {
                    format!("systemd credential {}", p.display())
                }
            };
            println!("# {}: OK; client secret from {source}", path.display());
            for n in notes {
                println!("# note: {n}");
            }
            print!("{}", l.config.to_redacted_yaml());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            EX_CONFIG
        }
    }
}

async fn run(path: &Path, instance: Option<&Instance>) -> u8 {
    let loaded = match Config::load_as(path, instance) {
        Ok(l) => l,
        Err(e) => {
            logging::init("info");
            if matches!(e, ConfigError::NotConfigured { .. }) {
                notify::status(&format!(
                    "not configured: set dingtalk.client_id in {}",
                    path.display()
                ));
            }
            eprintln!("dingtalk-streamd: {e}");
            return EX_CONFIG;
        }
    };
    logging::init(&loaded.config.log.level);
    let shutdown = CancellationToken::new();
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install SIGTERM/SIGINT handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            shutdown.cancel();
        })
    };
    let result = dingtalk_streamd::run(loaded, shutdown).await;
    signals.abort();
    match result {
        Ok(()) => 0,
        Err(e) => {
            notify::status(&format!("failed: {e}"));
            eprintln!("dingtalk-streamd: {e}");
            e.exit_code()
        }
    }
}
