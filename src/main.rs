//! The `matrix-provisioner` command: parse the command line, build, run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use matrix_provisioner::app::{termination_signal, Application, Core};
use matrix_provisioner::config::Settings;
use matrix_provisioner::passes::PassError;
use matrix_provisioner::secret::Secret;
use matrix_provisioner::store::Store;
use matrix_provisioner::{http, telemetry};

/// Provisions Matrix (Synapse) accounts for DAARION Auth users.
///
/// All settings come from the environment (see README.md); secrets may be
/// given as NAME_FILE, a path to a file holding them.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service and its workers (the default).
    Serve,
    /// Apply database migrations to DATABASE_URL and exit.
    Migrate,
    /// Print the OpenAPI description (as checked in at openapi/openapi.json).
    Openapi,
    /// GET /healthz of the service at BIND (for container health checks:
    /// slim images have no curl); exit 0 when it answers 200.
    Healthcheck,
    /// Run one profile sync pass (for cron) and print its summary as JSON.
    ///
    /// Exit status: 0 when everything succeeded, 1 when something failed
    /// (see the summary), 3 when another pass is running (sync_in_progress).
    SyncProfiles {
        /// Read every DAARION person, not only the changes since the last
        /// pass, and look for profiles changed by hand in Matrix.
        #[arg(long)]
        full: bool,
    },
    /// Run one City Rooms reconcile pass (for cron) and print its summary
    /// as JSON. Exit status as for sync-profiles.
    SyncRooms {
        /// Read every City Room, and compare every Matrix room with what
        /// Synapse holds (puts back hand edits).
        #[arg(long)]
        full: bool,
    },
    /// Print the application service's registration file for Synapse's
    /// `app_service_config_files` (from APPSERVICE_* and ROOM_ALIAS_PREFIX).
    AppserviceRegistration,
}

/// `sync-profiles` found another pass running.
const EXIT_IN_PROGRESS: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
        Command::Openapi => {
            print!("{}", http::openapi_pretty());
            Ok(())
        }
        Command::Healthcheck => healthcheck().await,
        Command::SyncProfiles { full } => return sync_profiles(full).await,
        Command::SyncRooms { full } => return sync_rooms(full).await,
        Command::AppserviceRegistration => Settings::from_env()
            .and_then(|s| s.city.registration(&s.server_name))
            .map(|file| print!("{file}"))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("matrix-provisioner: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    // Listen for SIGTERM first: one that comes during start-up still stops
    // the service cleanly.
    let stop = termination_signal()?;
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    let app = Application::build(settings).await?;
    app.run_until(stop).await
}

/// A command-line pass's report: printed as JSON, its success the exit status.
trait PassReport: serde::Serialize {
    fn succeeded(&self) -> bool;
}

impl PassReport for matrix_provisioner::passes::profiles::Summary {
    fn succeeded(&self) -> bool {
        self.succeeded()
    }
}

impl PassReport for matrix_provisioner::passes::rooms::RoomSummary {
    fn succeeded(&self) -> bool {
        self.succeeded()
    }
}

async fn sync_profiles(full: bool) -> ExitCode {
    run_pass(|core| async move {
        let result = core.sync.run(full).await;
        let busy = matches!(result, Err(PassError::InProgress { .. }));
        (result.map_err(|e| e.to_string()), busy)
    })
    .await
}

async fn sync_rooms(full: bool) -> ExitCode {
    run_pass(|core| async move {
        let result = core.room_sync.run(full).await;
        let busy = matches!(result, Err(PassError::InProgress { .. }));
        (result.map_err(|e| e.to_string()), busy)
    })
    .await
}

/// Builds the core, runs one pass (for cron) and reports it: exit status 0
/// when everything succeeded, 1 when something failed, 3 when another pass
/// is running (sync_in_progress).
async fn run_pass<R, F, Fut>(pass: F) -> ExitCode
where
    R: PassReport,
    F: FnOnce(std::sync::Arc<Core>) -> Fut,
    Fut: std::future::Future<Output = (Result<R, String>, bool)>,
{
    let core = match Settings::from_env() {
        Ok(settings) => {
            telemetry::init(settings.log_format);
            Core::build(settings).await
        }
        Err(e) => Err(e.into()),
    };
    let core = match core {
        Ok(core) => std::sync::Arc::new(core),
        Err(e) => {
            eprintln!("matrix-provisioner: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let (result, busy) = pass(std::sync::Arc::clone(&core)).await;
    core.store.close().await;
    match result {
        Ok(summary) => {
            println!(
                "{}",
                serde_json::to_string(&summary).expect("a summary serialises")
            );
            if summary.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) if busy => {
            eprintln!("matrix-provisioner: sync_in_progress: {e}");
            ExitCode::from(EXIT_IN_PROGRESS)
        }
        Err(e) => {
            eprintln!("matrix-provisioner: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate() -> anyhow::Result<()> {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://matrix-provisioner.db".into());
    let store = Store::connect(&Secret::new(url), 1).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}

async fn healthcheck() -> anyhow::Result<()> {
    let bind: SocketAddr = std::env::var("BIND")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:7030".into())
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("BIND is malformed: {e}"))?;
    // A service listening on all addresses is reached on loopback.
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("http://{}/healthz", SocketAddr::new(ip, bind.port()));
    let response = matrix_provisioner::outbound::client(Duration::from_secs(5))
        .build()?
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: no answer ({})", e.without_url()))?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    Ok(())
}
