//! The `matrix-provisioner` command: parse the command line, build, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use matrix_provisioner::app::{termination_signal, Application};
use matrix_provisioner::config::{Secret, Settings};
use matrix_provisioner::store::Store;
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
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

async fn migrate() -> anyhow::Result<()> {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://matrix-provisioner.db".into());
    let store = Store::connect(&Secret::new(url), 1).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}
