//! [`run`]: assembles the daemon (spool, sockets, groups, supervisor), reports READY once the
//! config is loaded, the spool open and the sockets ready (not waiting for DingTalk), keeps
//! STATUS= current, applies SIGHUP reloads, and stops cleanly on cancellation.

use crate::config::{Config, ConfigError, Loaded};
use crate::control::status::Shared;
use crate::gateway::proxy::ProxySettings;
use crate::gateway::ticket::{TicketClient, TicketError};
use crate::gateway::tls::{self, TlsError};
use crate::notify::{self, Part, Progress, Watchdog};
use crate::sink::callbacks::Callbacks;
use crate::sink::group::{GroupRegistry, GroupSettings};
use crate::sink::hub::Hub;
use crate::sink::listen::{self, ListenError};
use crate::sink::peer::PeerEnv;
use crate::spool::SpoolHandle;
use crate::spool::writer::{self, Writer};
use crate::spool::{SpoolError, Store, StoreOptions};
use crate::stream::connect::ConnectParams;
use crate::stream::connection::Liveness;
use crate::stream::{Inbound, StreamStats};
use crate::supervisor::policy::Policy;
use crate::supervisor::{Command, FatalCredentials, LinkStatus, Supervisor};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How often STATUS= is refreshed (only sent when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long stopping waits for the spool writer.
const WRITER_STOP: Duration = Duration::from_secs(5);

/// Why the daemon stopped with an error. [`Error::exit_code`] is what `main` returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad config (also on reload, where it is only logged).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad `tls.ca_file` or no trust roots.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The spool cannot be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// DingTalk rejected the credentials before any successful connection.
    #[error(transparent)]
    Credentials(#[from] FatalCredentials),
    /// The ticket client could not be built.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// A socket could not be bound or adopted.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Anything else.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    /// 78 (EX_CONFIG) for what the operator must fix before a restart can help; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Tls(_) | Error::Credentials(_) => 78,
            Error::Spool(e) if e.is_fatal_at_start() => 78,
            _ => 1,
        }
    }
}

fn store_options(c: &Config) -> StoreOptions {
    StoreOptions {
        max_bytes: c.spool.max_bytes.get(),
        max_age: c.spool.max_age.get(),
        dedupe_window: c.spool.dedupe_window.get(),
    }
}

fn group_settings(c: &Config) -> GroupSettings {
    GroupSettings {
        in_flight: c.consumers.in_flight as usize,
        ack_wait: c.consumers.ack_wait.get(),
        max_deliveries: c.consumers.max_deliveries,
    }
}

/// The ticket client and WebSocket parameters for a config.
fn clients(l: &Loaded) -> Result<(TicketClient, ConnectParams), Error> {
    let c = &l.config;
    let ca = c.tls.ca_file.as_deref();
    let ws_tls = tls::client_config(ca, &[])?;
    let http_tls = tls::client_config(ca, &[b"http/1.1"])?;
    let proxies = ProxySettings::from_env(c.proxy.clone());
    let ticket = TicketClient::new(c, l.secret.clone(), http_tls, &proxies)?;
    let params = ConnectParams {
        keepalive: c.keepalive.clone(),
        timeout: c.reconnect.connect_timeout.get(),
        tls: ws_tls,
        proxies,
        max_frame_bytes: c.limits.max_frame_bytes.get() as usize,
    };
    Ok((ticket, params))
}

/// The listener for `role`: the inherited one (socket activation) when there is one, else
/// bound here at `path` (and then removed on exit: inherited ones never are).
fn listener(
    inherited: &mut listen::Inherited,
    role: &'static str,
    index: usize,
    path: &std::path::Path,
    other: &std::path::Path,
    mode: u32,
    bound: &mut Vec<PathBuf>,
) -> Result<tokio::net::UnixListener, Error> {
    let std_listener = match inherited.take(role, index, path, &[other]) {
        Some((l, how, at)) => {
            let at = at.map_or_else(
                || "an unnamed socket".to_owned(),
                |p| p.display().to_string(),
            );
            if how == listen::Matched::Path {
                info!(socket = role, path = %at, "using the socket passed by systemd");
            } else {
                warn!(socket = role, path = %at, configured = %path.display(), matched = ?how, "using the socket passed by systemd, although it is not bound to the configured path");
            }
            l
        }
        None => {
            let l = listen::bind(path, mode)?;
            bound.push(path.to_owned());
            l
        }
    };
    tokio::net::UnixListener::from_std(std_listener).map_err(|source| Error::Io {
        context: format!("{role} socket"),
        source,
    })
}

/// Runs the daemon until `shutdown` is cancelled (Ok) or a fatal error.
pub async fn run(loaded: Loaded, shutdown: CancellationToken) -> Result<(), Error> {
    let inner = shutdown.child_token();
    let result = run_inner(loaded, shutdown.clone(), inner.clone()).await;
    inner.cancel();
    result
}

/// How often a spool that is full at start is tried again.
const SPOOL_RETRY: Duration = Duration::from_secs(1);

/// Opens the spool. A full disk at start is not a config error: the daemon reports READY with
/// `spool full: not acking` and keeps trying (feeding the watchdog: waiting is its job now),
/// without connecting to DingTalk, since nothing could be ACKed. `None` when stopped meanwhile.
async fn open_spool(
    c: &Config,
    shutdown: &CancellationToken,
    hup: &mut tokio::signal::unix::Signal,
) -> Result<Option<Store>, Error> {
    let mut announced = false;
    loop {
        match Store::open(&c.spool.dir, store_options(c)) {
            Ok(store) => {
                if announced {
                    info!(cause = "spool_recovered", spool = %c.spool.dir.display(), "spool writable again: starting");
                }
                return Ok(Some(store));
            }
            Err(e) if e.is_disk_full() => {
                if !announced {
                    error!(cause = "spool_full", error = %e, "spool full at start: not connecting to DingTalk until space returns");
                    notify::ready(&format!(
                        "spool full: not acking (waiting for space in {})",
                        c.spool.dir.display()
                    ));
                    announced = true;
                }
                notify::watchdog();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = hup.recv() => {
                        warn!("reload ignored: the daemon is still waiting for spool space and applies reloads once it has started");
                        notify::ready(&format!(
                            "spool full: not acking (waiting for space in {})",
                            c.spool.dir.display()
                        ));
                    }
                    _ = tokio::time::sleep(SPOOL_RETRY) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn run_inner(
    loaded: Loaded,
    shutdown: CancellationToken,
    inner: CancellationToken,
) -> Result<(), Error> {
    let c = loaded.config.clone();
    let started = SystemTime::now();
    let (ticket, params) = clients(&loaded)?;
    // Before anything can wait: SIGHUP's default action would end the daemon, and
    // `systemctl reload` may come at any time after READY.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(
        |source| Error::Io {
            context: "installing the SIGHUP handler".into(),
            source,
        },
    )?;

    let Some(store) = open_spool(&c, &shutdown, &mut hup).await? else {
        notify::stopping("stopping");
        return Ok(());
    };
    let newest = store.newest_seq()?;
    let hub = Hub::new(newest);
    let callbacks = Callbacks::new(c.callbacks.clone());
    let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>(c.limits.max_pending_acks as usize);
    let writer_progress = Progress::new();
    let (spool, writer_task) = writer::spawn(
        Writer {
            store,
            inbound: inbound_rx,
            hub: hub.clone(),
            callbacks: callbacks.clone(),
            progress: writer_progress.clone(),
        },
        &c.spool.dir,
        inner.clone(),
    )?;

    let mut inherited = listen::Inherited::from_env()?;
    let mut bound = Vec::new();
    let mode = c.socket.mode.0;
    let stream_listener = listener(
        &mut inherited,
        "stream",
        0,
        &c.socket.path,
        &c.control.path,
        mode,
        &mut bound,
    )?;
    let control_listener = listener(
        &mut inherited,
        "control",
        1,
        &c.control.path,
        &c.socket.path,
        mode,
        &mut bound,
    )?;
    let unclaimed = inherited.unclaimed();
    if !unclaimed.is_empty() {
        warn!(sockets = ?unclaimed, "LISTEN_FDS passed sockets that match neither socket.path nor control.path; closing them");
    }
    drop(inherited);

    let (group_tx, group_rx) = watch::channel(group_settings(&c));
    let groups = GroupRegistry::new(
        spool.clone(),
        hub.clone(),
        callbacks.clone(),
        group_rx,
        inner.clone(),
    );
    groups.start_configured(&c.groups);

    let stats = Arc::new(StreamStats::default());
    let (link_tx, link_rx) = watch::channel(LinkStatus::default());
    let shared = Shared {
        started,
        link: link_rx.clone(),
        stream: stats.clone(),
        spool: spool.clone(),
        hub: hub.clone(),
        groups: groups.clone(),
        callbacks: callbacks.clone(),
    };

    let peer_env = PeerEnv {
        hub: hub.clone(),
        groups: groups.clone(),
        max_line: c.limits.max_line_bytes.get() as usize,
        shutdown: inner.clone(),
    };
    tokio::spawn(crate::sink::accept_loop(
        stream_listener,
        peer_env,
        c.limits.max_consumers as usize,
    ));
    tokio::spawn(crate::control::serve(
        control_listener,
        shared.clone(),
        inner.clone(),
    ));
    tokio::spawn(callbacks.clone().run_expiry(inner.clone()));
    if let Some(m) = &c.metrics {
        match tokio::net::TcpListener::bind(m.listen).await {
            Ok(l) => {
                tokio::spawn(crate::control::serve_metrics(
                    l,
                    shared.clone(),
                    inner.clone(),
                ));
            }
            Err(e) => warn!(address = %m.listen, error = %e, "metrics endpoint not available"),
        }
    }

    let reader_progress = Progress::new();
    let watchdog = {
        let link = link_rx.clone();
        let inbound = inbound_tx.clone();
        let health = spool.health.clone();
        let g = groups.clone();
        Watchdog::new(vec![
            Part::new(
                "WebSocket reader",
                reader_progress.clone(),
                Box::new(move || !link.borrow().state.is_open()),
            ),
            Part::new(
                "spool writer",
                writer_progress,
                Box::new(move || {
                    inbound.capacity() == inbound.max_capacity()
                        && !health.busy.load(Ordering::Relaxed)
                }),
            ),
            // Every consumer group's task must move: one wedged group stops the watchdog even
            // while the others run.
            Part::each("consumer sink", Box::new(move || g.progress())),
        ])
    };
    let (liveness_tx, liveness_rx) = watch::channel(Liveness::from(&c.keepalive));
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let sup = Supervisor {
        ticket,
        connect: params,
        inbound: inbound_tx,
        stats,
        link: link_tx,
        liveness: liveness_rx,
        policy: Policy::new(
            c.reconnect.initial_delay.get(),
            c.reconnect.max_delay.get(),
            c.reconnect.stable_after.get(),
        ),
        reader_progress,
        watchdog,
        commands: cmd_rx,
    };

    info!(
        config = %loaded.path.display(),
        socket = %c.socket.path.display(),
        spool = %c.spool.dir.display(),
        newest_seq = newest,
        "dingtalk-streamd {} ready", env!("CARGO_PKG_VERSION")
    );
    notify::ready("ready; connecting to DingTalk");

    let mut live = Live {
        current: loaded,
        liveness_tx,
        group_tx,
        callbacks,
        spool: spool.clone(),
        groups,
        commands: cmd_tx,
    };
    let sup_task = sup.run(inner.clone());
    tokio::pin!(sup_task);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let mut last_status = String::new();
    // Sticks to STATUS= until a reload succeeds: the running config is not the file's.
    let mut reload_note = "";
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            r = &mut sup_task => break r.map_err(Error::from),
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                info!("stopping: closing the DingTalk connection");
                notify::stopping("stopping");
                inner.cancel();
            }
            _ = hup.recv() => {
                reload_note = match live.reload().await {
                    Ok(()) => "",
                    Err(()) => " · last reload rejected (see the log)",
                };
                let line = shared.one_liner() + reload_note;
                notify::ready(&line);
                last_status = line;
            }
            _ = status_tick.tick() => {
                let line = shared.one_liner() + reload_note;
                if line != last_status {
                    notify::status(&line);
                    last_status = line;
                }
            }
        }
    };
    inner.cancel();
    if !stopping {
        notify::stopping("stopping");
    }
    let _ = tokio::time::timeout(WRITER_STOP, writer_task).await;
    for p in &bound {
        if let Err(e) = std::fs::remove_file(p) {
            warn!(path = %p.display(), error = %e, "cannot remove socket file");
        }
    }
    match &result {
        Ok(()) => info!("stopped"),
        Err(e) => error!(error = %e, "stopped with an error"),
    }
    result
}

/// What a reload can change while the daemon runs.
struct Live {
    current: Loaded,
    liveness_tx: watch::Sender<Liveness>,
    group_tx: watch::Sender<GroupSettings>,
    callbacks: Callbacks,
    spool: SpoolHandle,
    groups: GroupRegistry,
    commands: mpsc::UnboundedSender<Command>,
}

impl Live {
    /// SIGHUP: re-read the config; apply live what can change live; reconnect
    /// (make-before-break) only when credentials or the endpoint changed; keep the old config
    /// when the new one is broken. The caller sends `READY=1` afterwards.
    async fn reload(&mut self) -> Result<(), ()> {
        notify::reloading();
        let path = self.current.path.clone();
        match Config::load(&path)
            .map_err(Error::from)
            .and_then(|l| clients(&l).map(|c| (l, c)))
        {
            Err(e) => {
                error!(error = %e, "reload rejected: keeping the running configuration");
                Err(())
            }
            Ok((new, (ticket, params))) => {
                let (o, n) = (&self.current.config, &new.config);
                crate::logging::set_level(&n.log.level);
                self.liveness_tx.send_replace(Liveness::from(&n.keepalive));
                self.group_tx.send_replace(group_settings(n));
                self.callbacks.set_routes(n.callbacks.clone());
                self.spool.set_options(store_options(n));
                self.groups.start_configured(&n.groups);
                for (what, changed) in [
                    (
                        "socket.path",
                        o.socket.path != n.socket.path || o.socket.mode != n.socket.mode,
                    ),
                    ("control.path", o.control.path != n.control.path),
                    ("spool.dir", o.spool.dir != n.spool.dir),
                    (
                        "limits",
                        o.limits.max_pending_acks != n.limits.max_pending_acks
                            || o.limits.max_consumers != n.limits.max_consumers
                            || o.limits.max_line_bytes != n.limits.max_line_bytes,
                    ),
                    (
                        "metrics",
                        o.metrics.as_ref().map(|m| m.listen)
                            != n.metrics.as_ref().map(|m| m.listen),
                    ),
                ] {
                    if changed {
                        warn!(
                            key = what,
                            "changed in the config; takes effect after a restart"
                        );
                    }
                }
                let relink = o.dingtalk.client_id != n.dingtalk.client_id
                    || self.current.secret != new.secret
                    || o.dingtalk.open_url != n.dingtalk.open_url
                    || o.dingtalk.subscriptions != n.dingtalk.subscriptions
                    || o.tls.ca_file != n.tls.ca_file
                    || o.proxy != n.proxy;
                if relink {
                    info!(
                        cause = "reload",
                        "credentials or endpoint changed: reconnecting make-before-break"
                    );
                }
                let cmd = Command::Reload {
                    ticket: Box::new(ticket),
                    connect: Box::new(params),
                    reconnect: (
                        n.reconnect.initial_delay.get(),
                        n.reconnect.max_delay.get(),
                        n.reconnect.stable_after.get(),
                    ),
                    relink,
                };
                let _ = self.commands.send(cmd);
                self.current = new;
                info!(config = %path.display(), "configuration reloaded");
                Ok(())
            }
        }
    }
}
