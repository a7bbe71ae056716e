//! The daemon's life in three steps: [`Daemon::start`] assembles it (spool, relay, sockets,
//! groups, sinks, supervisor) and reports READY once it can serve (not waiting for DingTalk);
//! [`Daemon::serve`] runs until shutdown, keeping STATUS= current and applying SIGHUP reloads;
//! [`Daemon::stop`] closes the DingTalk connection, waits for every task it spawned and for the
//! spool writer's last commit, and removes the socket files it bound.

pub mod reload;

use crate::compat::{self, Upstream};
use crate::config::{Config, ConfigError, Loaded};
use crate::consumers::groups::{GroupRegistry, GroupSettings};
use crate::consumers::hub::Hub;
use crate::consumers::peer::PeerEnv;
use crate::gateway::proxy::ProxySettings;
use crate::gateway::ticket::{TicketClient, TicketError};
use crate::gateway::tls::{self, TlsError};
use crate::listeners::activation::ListenError;
use crate::listeners::{self, RequestLimits, UnixSockets};
use crate::notify::{self, Part, Progress, Watchdog};
use crate::observe::Observations;
use crate::relay::budget::Budget;
use crate::relay::callbacks::Callbacks;
use crate::sinks;
use crate::spool::{SpoolError, SpoolHandle, Store, StoreOptions, WriterThread};
use crate::status::Sources;
use crate::stream::StreamStats;
use crate::stream::connect::ConnectParams;
use crate::stream::connection::Liveness;
use crate::supervisor::machine::Settings;
use crate::supervisor::{FatalCredentials, LinkStatus, Reload, Supervisor};
use reload::Plan;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// How often STATUS= is refreshed (only sent when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long stopping waits for the spool writer's last commit.
const WRITER_STOP: Duration = Duration::from_secs(5);
/// How long stopping waits for the other tasks (consumers, control clients).
const TASKS_STOP: Duration = Duration::from_secs(3);
/// How often a spool that is full at start is tried again.
const SPOOL_RETRY: Duration = Duration::from_secs(1);

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

/// Runs the daemon until `shutdown` is cancelled (Ok) or a fatal error.
pub async fn run(loaded: Loaded, shutdown: CancellationToken) -> Result<(), Error> {
    let Some(mut daemon) = Daemon::start(loaded, &shutdown).await? else {
        notify::stopping("stopping");
        return Ok(());
    };
    let result = daemon.serve(&shutdown).await;
    daemon.stop().await;
    match &result {
        Ok(()) => info!("stopped"),
        Err(e) => error!(error = %e, "stopped with an error"),
    }
    result
}

fn store_options(c: &Config) -> StoreOptions {
    StoreOptions {
        max_bytes: c.spool.max_bytes.get(),
        max_age: c.spool.max_age.get(),
        dedupe_window: c.spool.dedupe_window.get(),
        bodies_without_groups: false,
    }
}

fn group_settings(c: &Config) -> GroupSettings {
    GroupSettings {
        in_flight: c.consumers.in_flight as usize,
        ack_wait: c.consumers.ack_wait.get(),
        max_deliveries: c.consumers.max_deliveries,
        adhoc_ttl: c.consumers.adhoc_ttl.get(),
        adhoc_groups: c.consumers.adhoc_groups,
        max_groups: c.limits.max_groups as usize,
    }
}

fn reconnect_settings(c: &Config) -> Settings {
    Settings {
        initial_delay: c.reconnect.initial_delay.get(),
        max_delay: c.reconnect.max_delay.get(),
        stable_after: c.reconnect.stable_after.get(),
    }
}

/// The ticket client, WebSocket parameters and OpenAPI upstream (compat) for a config.
fn clients(l: &Loaded) -> Result<(TicketClient, ConnectParams, Upstream), Error> {
    let c = &l.config;
    let ca = c.tls.ca_file.as_deref();
    let ws_tls = tls::client_config(ca, &[])?;
    let http_tls = tls::client_config(ca, &[b"http/1.1"])?;
    let proxies = ProxySettings::from_env(c.proxy.clone());
    let ticket = TicketClient::new(c, l.secret.clone(), http_tls.clone(), &proxies)?;
    let upstream =
        Upstream::new(c, l.secret.clone(), http_tls, &proxies).map_err(|e| Error::Io {
            context: "building the OpenAPI client of compat".into(),
            source: std::io::Error::other(e),
        })?;
    let params = ConnectParams {
        keepalive: c.keepalive.clone(),
        timeout: c.reconnect.connect_timeout.get(),
        tls: ws_tls,
        proxies,
        max_frame_bytes: c.limits.max_frame_bytes.get() as usize,
    };
    Ok((ticket, params, upstream))
}

/// Every check `run` makes before it connects that needs neither the spool's lock nor a bound
/// socket, so `check-config` (and `ExecReload=`) makes them while a daemon runs: the TLS trust
/// store (`tls.ca_file` readable, PEM), the HTTP clients, the spool directory (a writable
/// directory, or missing with its parent there), and nothing but a socket at the socket
/// paths. The config, its secret files and their modes are checked by [`Config::load`].
/// Returns notes worth printing (a spool directory still to be created).
pub fn preflight(loaded: &Loaded) -> Result<Vec<String>, Error> {
    let c = &loaded.config;
    clients(loaded)?;
    let mut notes = Vec::new();
    match crate::spool::check_spool_dir(&c.spool.dir) {
        Ok(crate::spool::SpoolDir::Ready) => {}
        Ok(crate::spool::SpoolDir::Created) => notes.push(format!(
            "spool.dir {} does not exist yet: it is created at start (systemd's StateDirectory= does it under the unit)",
            c.spool.dir.display()
        )),
        // `run` waits for space rather than refusing to start.
        Err(e) if e.is_disk_full() => notes.push(format!(
            "{e}: the daemon starts, but stores and ACKs nothing until space returns"
        )),
        Err(e) => return Err(e.into()),
    }
    for path in [&c.socket.path, &c.control.path] {
        listeners::activation::check_path(path)?;
    }
    Ok(notes)
}

/// Opens the spool. A full disk at start is not a config error: the daemon reports READY with
/// `spool full: not acking` and keeps trying (feeding the watchdog: waiting is its job now),
/// without connecting to DingTalk, since nothing could be ACKed. `None` when stopped meanwhile.
async fn open_spool(
    c: &Config,
    shutdown: &CancellationToken,
    hup: &mut Signal,
) -> Result<Option<Store>, Error> {
    if crate::spool::create_spool_dir(&c.spool.dir)? {
        info!(spool = %c.spool.dir.display(), "created the spool directory");
    }
    let mut announced = false;
    let waiting = format!(
        "spool full: not acking (waiting for space in {})",
        c.spool.dir.display()
    );
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
                    notify::ready(&waiting);
                    announced = true;
                }
                notify::watchdog();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = hup.recv() => {
                        warn!("reload ignored: the daemon is still waiting for spool space and applies reloads once it has started");
                        notify::ready(&waiting);
                    }
                    _ = tokio::time::sleep(SPOOL_RETRY) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a reload can change while the daemon runs, and where each change goes.
struct Reloadable {
    loaded: Loaded,
    liveness: watch::Sender<Liveness>,
    groups_settings: watch::Sender<GroupSettings>,
    callbacks: Callbacks,
    spool: SpoolHandle,
    groups: GroupRegistry,
    supervisor: mpsc::UnboundedSender<Reload>,
    /// The local SDK endpoint, when `compat:` is configured.
    compat: Option<compat::Server>,
    compat_env: compat::Env,
    upstream: watch::Sender<Arc<Upstream>>,
}

/// The supervisor's loop, started by [`Daemon::start`] and driven by [`Daemon::serve`].
type SupervisorRun = Pin<Box<dyn Future<Output = Result<(), FatalCredentials>> + Send>>;

/// A started daemon.
pub struct Daemon {
    /// Cancelled to stop every part (a child of the caller's shutdown token).
    parts: CancellationToken,
    /// Every task spawned for the daemon, awaited on stop.
    tasks: TaskTracker,
    writer: Option<WriterThread>,
    bound: Vec<PathBuf>,
    sources: Sources,
    reloadable: Reloadable,
    hup: Signal,
    supervisor: Option<SupervisorRun>,
    /// A sink found the config does not fit its destination: the daemon stops (exit 78).
    sink_fatal: mpsc::UnboundedReceiver<ConfigError>,
}

impl Daemon {
    /// Assembles the daemon and reports READY. `None` when `shutdown` came while waiting for
    /// spool space.
    pub async fn start(
        loaded: Loaded,
        shutdown: &CancellationToken,
    ) -> Result<Option<Daemon>, Error> {
        let c = loaded.config.clone();
        let started = SystemTime::now();
        let (ticket, params, upstream) = clients(&loaded)?;
        // Before anything can wait: SIGHUP's default action would end the daemon, and
        // `systemctl reload` may come at any time after READY.
        let mut hup = signal(SignalKind::hangup()).map_err(|source| Error::Io {
            context: "installing the SIGHUP handler".into(),
            source,
        })?;
        let Some(mut store) = open_spool(&c, shutdown, &mut hup).await? else {
            return Ok(None);
        };
        // Configured groups and the sinks' groups exist in the spool before the first frame:
        // bodies are only stored while some group exists to read them.
        for name in c
            .configured_groups()
            .into_iter()
            .chain(sinks::groups(&c.sinks).into_iter().map(|(g, _)| g))
        {
            store.ensure_group(&name, crate::spool::StartAt::Oldest)?;
        }
        if let Some(half) = notify::watchdog_interval() {
            let watchdog = half * 2;
            if c.limits.commit_stall.get() >= watchdog {
                warn!(
                    commit_stall = %c.limits.commit_stall,
                    watchdog = ?watchdog,
                    "limits.commit_stall is not below the unit's WatchdogSec=: a stalled disk ends in the watchdog's kill instead of a proper close; keep it below"
                );
            }
        }
        let parts = shutdown.child_token();
        let tasks = TaskTracker::new();
        let newest = store.newest_seq()?;
        let known_groups = store.load_groups()?;
        let hub = Hub::new(
            newest,
            usize::try_from(c.limits.recent_cache_bytes.get()).unwrap_or(usize::MAX),
        );
        let callbacks = Callbacks::new(c.callbacks.clone());
        let writer_progress = Progress::new();
        let budget = Budget::new(
            c.limits.max_pending_acks as usize,
            usize::try_from(c.limits.max_pending_bytes.get()).unwrap_or(usize::MAX),
        );
        let observed = Arc::new(Observations::default());
        let (relay, spool, writer) = crate::relay::start(
            store,
            callbacks.clone(),
            hub.clone(),
            budget,
            writer_progress.clone(),
            observed.clone(),
        )?;
        let sockets = UnixSockets::open(&c)?;

        let (groups_settings, groups_rx) = watch::channel(group_settings(&c));
        let groups = GroupRegistry::new(
            spool.clone(),
            hub.clone(),
            callbacks.clone(),
            groups_rx,
            parts.clone(),
            tasks.clone(),
        );
        // Each sink reads the spool through a configured group of its own.
        groups.set_sinks(&sinks::groups(&c.sinks));
        // Every group the spool knows runs from the start: it shows in status, and an ad-hoc
        // one expires even if no member ever comes back.
        groups.start(&c.configured_groups(), &known_groups);
        let (fatal_tx, fatal) = mpsc::unbounded_channel();
        let sinks = sinks::start(
            &loaded,
            sinks::Env {
                groups: groups.clone(),
                shutdown: parts.clone(),
                tasks: tasks.clone(),
                fatal: fatal_tx,
            },
        )?;

        let stats = Arc::new(StreamStats::default());
        let (link_tx, link_rx) = watch::channel(LinkStatus::default());
        let metrics = match &c.metrics {
            Some(m) => match tokio::net::TcpListener::bind(m.listen).await {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!(address = %m.listen, error = %e, "metrics endpoint not available");
                    None
                }
            },
            None => None,
        };
        let sources = Sources {
            started,
            link: link_rx.clone(),
            stream: stats.clone(),
            observed: observed.clone(),
            metrics: metrics.as_ref().and_then(|l| l.local_addr().ok()),
            spool: spool.clone(),
            relay: relay.clone(),
            hub: hub.clone(),
            groups: groups.clone(),
            callbacks: callbacks.clone(),
            sinks,
        };
        let peers = PeerEnv {
            hub: hub.clone(),
            groups: groups.clone(),
            max_line: c.limits.max_line_bytes.get() as usize,
            shutdown: parts.clone(),
        };
        tasks.spawn(listeners::serve_consumers(
            sockets.stream,
            peers,
            c.limits.max_consumers as usize,
            tasks.clone(),
        ));
        let request_limits = RequestLimits {
            max_connections: c.limits.max_listener_connections as usize,
            request_timeout: c.limits.request_timeout.get(),
        };
        tasks.spawn(listeners::serve_control(
            sockets.control,
            sources.clone(),
            request_limits,
            parts.clone(),
            tasks.clone(),
        ));
        tasks.spawn(callbacks.clone().run_expiry(parts.clone()));
        if let Some(l) = metrics {
            if let Some(address) = sources.metrics {
                info!(%address, "serving Prometheus metrics at /metrics");
            }
            tasks.spawn(listeners::serve_metrics(
                l,
                sources.clone(),
                request_limits,
                parts.clone(),
                tasks.clone(),
            ));
        }

        let (upstream, upstream_rx) = watch::channel(Arc::new(upstream));
        let compat_env = compat::Env {
            groups: groups.clone(),
            callbacks: callbacks.clone(),
            upstream: upstream_rx,
            shutdown: parts.clone(),
            tasks: tasks.clone(),
        };
        let compat = compat::Server::of_config(&loaded, compat_env.clone())
            .await
            .map_err(|source| Error::Io {
                context: "binding compat.listen".into(),
                source,
            })?;

        let reader_progress = Progress::new();
        let watchdog = {
            let link = link_rx.clone();
            let writer_state = spool.state.clone();
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
                    Box::new(move || writer_state.idle()),
                ),
                // Every consumer group's task must move: one wedged group stops the watchdog
                // even while the others run.
                Part::each("consumer sink", Box::new(move || g.progress())),
            ])
        };
        let (liveness, liveness_rx) = watch::channel(Liveness::from(&c));
        let (reloads_tx, reloads) = mpsc::unbounded_channel();
        let supervisor = Supervisor {
            ticket,
            connect: params,
            relay,
            stats,
            observed,
            link: link_tx,
            liveness: liveness_rx,
            settings: reconnect_settings(&c),
            reader_progress,
            watchdog,
            reloads,
        };
        info!(
            config = %loaded.path.display(),
            socket = %c.socket.path.display(),
            spool = %c.spool.dir.display(),
            newest_seq = newest,
            "dingtalk-streamd {} ready", env!("CARGO_PKG_VERSION")
        );
        notify::ready("ready; connecting to DingTalk");
        let run = Box::pin(supervisor.run(parts.clone()));
        Ok(Some(Daemon {
            parts,
            tasks,
            writer: Some(writer),
            bound: sockets.bound,
            sources,
            reloadable: Reloadable {
                loaded,
                liveness,
                groups_settings,
                callbacks,
                spool,
                groups,
                supervisor: reloads_tx,
                compat,
                compat_env,
                upstream,
            },
            hup,
            supervisor: Some(run),
            sink_fatal: fatal,
        }))
    }

    /// Runs until `shutdown` (Ok) or until the supervisor ends with an error.
    pub async fn serve(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut supervisor = self.supervisor.take().expect("serve runs once");
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        // STATUS= has a reader only under systemd; elsewhere an idle daemon stays asleep.
        let status_on = notify::listening();
        let mut last_status = String::new();
        // Sticks to STATUS= until a reload succeeds: the running config is not the file's.
        let mut reload_note = "";
        let mut stopping = false;
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    info!("stopping: closing the DingTalk connection");
                    notify::stopping("stopping");
                    stopping = true;
                    break supervisor.await.map_err(Error::from);
                }
                r = &mut supervisor => break r.map_err(Error::from),
                Some(e) = self.sink_fatal.recv() => {
                    error!(error = %e, "stopping: a sink's destination does not fit the configuration");
                    notify::stopping("stopping: sink configuration error");
                    stopping = true;
                    break Err(Error::Config(e));
                }
                _ = self.hup.recv() => {
                    reload_note = match self.reloadable.reload() {
                        Ok(()) => "",
                        Err(()) => " · last reload rejected (see the log)",
                    };
                    let line = self.sources.report().summary + reload_note;
                    notify::ready(&line);
                    last_status = line;
                }
                _ = status_tick.tick(), if status_on => {
                    let line = self.sources.report().summary + reload_note;
                    if line != last_status {
                        notify::status(&line);
                        last_status = line;
                    }
                }
            }
        };
        if !stopping {
            // The supervisor ended first (credentials rejected, or it saw the shutdown first).
            notify::stopping("stopping");
        }
        result
    }

    /// Stops every part and waits for them (bounded), then removes the sockets it bound.
    pub async fn stop(mut self) {
        self.parts.cancel();
        self.tasks.close();
        if tokio::time::timeout(TASKS_STOP, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(tasks = self.tasks.len(), "some tasks did not stop in time");
        }
        if let Some(w) = self.writer.take() {
            w.stop(WRITER_STOP).await;
        }
        listeners::remove_bound(&self.bound);
    }
}

impl Reloadable {
    /// SIGHUP: re-read the config; apply live what can change live; replace the link
    /// (make-before-break) when the plan says so; keep the old config when the new one is
    /// broken. The caller sends `READY=1` afterwards.
    fn reload(&mut self) -> Result<(), ()> {
        notify::reloading();
        let path = self.loaded.path.clone();
        let instance = self.loaded.instance.clone();
        let (new, (ticket, connect, upstream)) = match Config::load_as(&path, instance.as_ref())
            .map_err(Error::from)
            .and_then(|l| clients(&l).map(|c| (l, c)))
        {
            Ok(v) => v,
            Err(e) => {
                error!(error = %e, "reload rejected: keeping the running configuration");
                return Err(());
            }
        };
        let plan = Plan::between(
            &self.loaded.config,
            &self.loaded.secret,
            &new.config,
            &new.secret,
        );
        let n = &new.config;
        crate::logging::set_level(&n.log.level);
        self.liveness.send_replace(Liveness::from(n));
        self.groups_settings.send_replace(group_settings(n));
        self.callbacks.set_routes(n.callbacks.clone());
        self.spool.set_options(store_options(n));
        self.groups.start_configured(&n.configured_groups());
        if plan.relink {
            // New credentials, endpoint, trust or proxy: the cached access token goes too.
            self.upstream.send_replace(Arc::new(upstream));
        }
        let compat = self.compat.take();
        self.compat = compat::reload(compat, compat::Settings::of(&new), &self.compat_env);
        for key in &plan.needs_restart {
            warn!(key, "changed in the config; takes effect after a restart");
        }
        let s = reconnect_settings(n);
        let _ = self.supervisor.send(Reload {
            ticket,
            connect,
            reconnect: (s.initial_delay, s.max_delay, s.stable_after),
            relink: plan.relink,
        });
        self.loaded = new;
        info!(config = %path.display(), "configuration reloaded");
        Ok(())
    }
}
