//! `meshd`: the daemon. `meshd --config FILE` runs one host of the mesh; `meshd demo`
//! runs the example mesh of `peers/` on loopback and sends real streams across it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use meshd::daemon::Daemon;
use tokio_util::sync::CancellationToken;

mod demo;
mod malloc;

/// Exit code for unusable configuration or arguments (EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "meshd",
    version,
    about = "Forward TCP streams to named services on other servers over authenticated, encrypted, multiplexed links",
    long_about = "meshd runs on every server of the mesh. It reads its host config (name, key, \
manifest path), loads and validates the whole manifest before binding any port, keeps one \
link up to each peer it forwards to, and serves its own services to the peers on their \
allow lists.\n\nSIGHUP reloads the configuration. SIGTERM (or SIGINT) drains: entrances and \
the mesh port close, every link sends GOAWAY, open streams run on for up to \
drain_grace_ms (host config, default 20000), then the rest are reset; a second SIGTERM \
resets them at once.\n\nExit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 64 when the \
configuration is invalid (nothing was bound), 1 on a runtime failure (e.g. a port in use)."
)]
struct Args {
    /// Host config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/meshd/meshd.toml")]
    config: PathBuf,

    /// Runtime threads. 1 (the default) runs every link, stream and timer on one thread:
    /// no cross-thread wake-ups, which measured 1.6x the requests per second of a 2-thread
    /// runtime for 50 concurrent Redis clients and 11% more new connections per second on
    /// a 2-core machine, with the same single-stream throughput (about 6 Gbit/s per core).
    /// Raise it only if one core is not enough for this host's traffic.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256), global = true)]
    threads: u16,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the example mesh of peers/ on loopback, with fresh keys and stand-in services,
    /// and show real streams crossing it.
    Demo {
        /// The example manifest directory.
        #[arg(long, value_name = "DIR")]
        manifest: Option<PathBuf>,
        /// Keep the demo mesh running after the demonstration, until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Run every link in this auth mode instead of the manifest's: `tls` makes a demo
        /// CA and one certificate per peer (as `meshctl cert` does) in the demo's temporary
        /// directory.
        #[arg(long, value_name = "MODE", value_parser = ["noise", "psk", "tls"])]
        auth: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

/// Logs go to stderr; colours only on a terminal, so log files and journald stay greppable.
fn init_logging(format: LogFormat, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let malloc = malloc::tune();
    let args = Args::parse();
    // The demo prints its own story on stdout; its daemons only log problems.
    let level = if args.command.is_some() {
        "warn"
    } else {
        "info"
    };
    init_logging(args.log_format, level);
    match malloc {
        malloc::Tuning::Refused => {
            tracing::warn!("glibc refused the malloc thresholds; its defaults stay")
        }
        malloc::Tuning::LeftToOperator => {
            tracing::info!("malloc tuning left to GLIBC_TUNABLES")
        }
        malloc::Tuning::Set | malloc::Tuning::NotGlibc => {}
    }
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads as usize);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match args.command {
        Some(Command::Demo {
            manifest,
            keep,
            auth,
        }) => runtime.block_on(demo::run(manifest, keep, auth)),
        None => runtime.block_on(run_daemon(args.config, args.threads == 1)),
    }
}

/// Applies `busy_poll_us`. Polling needs the links and the poller on one thread, so
/// with `--threads` above 1 it stays off.
fn set_busy_poll(max: std::time::Duration, single_thread: bool) {
    if single_thread {
        meshd::busy_poll::configure(max);
    } else if !max.is_zero() {
        tracing::info!("busy_poll_us is ignored with --threads above 1");
    }
}

async fn run_daemon(path: PathBuf, single_thread: bool) -> ExitCode {
    // Validate everything before binding anything.
    let cfg = match meshd::config::load_config(&path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("meshd: invalid configuration:\n{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    set_busy_poll(cfg.host.busy_poll, single_thread);
    if single_thread {
        tokio::spawn(meshd::busy_poll::run());
    }
    let mut daemon = match Daemon::start(cfg, CancellationToken::new()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("meshd: {e}");
            return ExitCode::from(1);
        }
    };
    let signals = Signals::install();
    let mut signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meshd: cannot install signal handlers: {e}");
            daemon.shutdown().await;
            return ExitCode::from(1);
        }
    };
    let mut requests = daemon.take_reload_requests();
    notify_systemd(sd_notify::NotifyState::Ready);
    spawn_watchdog();
    loop {
        let reply = tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => None,
            },
            Some(reply) = next_request(&mut requests) => Some(reply),
        };
        notify_systemd(sd_notify::NotifyState::Reloading);
        let result = reload(&mut daemon, &path, single_thread).await;
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        notify_systemd(sd_notify::NotifyState::Ready);
    }
    notify_systemd(sd_notify::NotifyState::Stopping);
    tracing::info!("shutting down (SIGTERM or SIGINT again resets open streams at once)");
    let again = async { while !matches!(signals.next().await, Signal::Stop) {} };
    daemon.shutdown_or(again).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Re-reads and validates everything, then applies the difference. An invalid config
/// changes nothing: the old one keeps running and the error is logged.
async fn reload(
    daemon: &mut Daemon,
    path: &std::path::Path,
    single_thread: bool,
) -> Result<String, String> {
    let result = match meshd::config::load_config(path) {
        Ok(cfg) => {
            let busy_poll = cfg.host.busy_poll;
            let applied = daemon.reload(cfg).await.map_err(|e| e.to_string());
            if applied.is_ok() {
                set_busy_poll(busy_poll, single_thread);
            }
            applied
        }
        Err(e) => {
            daemon.reload_rejected();
            // One log line, so the reason travels with the event in journald and greps.
            let why = e.to_string().replace('\n', "; ");
            Err(format!("invalid configuration, nothing changed: {why}"))
        }
    };
    match &result {
        Ok(summary) => tracing::info!("reload applied: {summary}"),
        Err(e) => tracing::error!("reload failed; the previous configuration keeps running: {e}"),
    }
    result.map(|s| s.to_string())
}

/// The next `POST /reload`, or never when there is no admin channel.
async fn next_request(
    requests: &mut Option<tokio::sync::mpsc::Receiver<meshd::admin::ReloadRequest>>,
) -> Option<meshd::admin::ReloadRequest> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

enum Signal {
    Stop,
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// Tells systemd (Type=notify) about a state change; a no-op outside systemd.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        let socket = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
        tracing::warn!(%socket, error = %e, "cannot notify systemd");
    }
}

/// When systemd runs meshd with `WatchdogSec=`, sends WATCHDOG=1 at half that interval
/// from a task on the runtime: a runtime that stops running its tasks (wedged by a bug or
/// a blocking call) stops the pings too, and systemd restarts meshd.
fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(std::time::Duration::from_millis(1));
    tracing::info!(?interval, "systemd watchdog on: pinging every {period:?}");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notify_systemd(sd_notify::NotifyState::Watchdog);
        }
    });
}
