//! The `matrix-provisioner` command: parse the command line, build, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use matrix_provisioner::app::{termination_signal, Application, Core};
use matrix_provisioner::config::{Secret, Settings};
use matrix_provisioner::store::Store;
use matrix_provisioner::sync::SyncError;
use matrix_provisioner::telemetry;

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
}

/// `sync-profiles` found another pass running.
const EXIT_IN_PROGRESS: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
        Command::SyncProfiles { full } => return sync_profiles(full).await,
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
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    let app = Application::build(settings).await?;
    app.run_until(termination_signal()).await
}

async fn sync_profiles(full: bool) -> ExitCode {
    let core = match Settings::from_env() {
        Ok(settings) => {
            telemetry::init(settings.log_format);
            Core::build(settings).await
        }
        Err(e) => Err(e.into()),
    };
    let core = match core {
        Ok(core) => core,
        Err(e) => {
            eprintln!("matrix-provisioner: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = core.sync.run(full).await;
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
        Err(e @ SyncError::InProgress(_)) => {
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
