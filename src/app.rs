//! Builds the running service from settings: database (migrated), Synapse
//! client, HTTP server, workers and the sync pass. Tests bind port 0 and
//! read the port back.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::{watch, Notify};

use crate::avatar::AvatarFetcher;
use crate::config::Settings;
use crate::http::{self, AppState};
use crate::jobs::Worker;
use crate::store::{LocalpartPolicy, Store};
use crate::synapse::Synapse;
use crate::sync::ProfileSync;

/// How long in-flight requests and jobs get to finish after SIGTERM.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

pub struct Application {
    port: u16,
    server: Server,
    worker: Arc<Worker>,
    store: Store,
    synapse: Arc<Synapse>,
    concurrency: usize,
}

/// The service without its HTTP server: database (migrated), Synapse
/// client, worker and sync pass. `serve` adds the server; the cron command
/// (`sync-profiles`) uses this alone.
pub struct Core {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub synapse: Arc<Synapse>,
    pub policy: LocalpartPolicy,
    pub worker: Arc<Worker>,
    pub sync: Arc<ProfileSync>,
    /// Wakes an idle worker when a job is queued.
    pub wake: Arc<Notify>,
}

impl Core {
    pub async fn build(settings: Settings) -> anyhow::Result<Core> {
        let settings = Arc::new(settings);
        let store = Store::connect(&settings.database_url, settings.db_max_connections).await?;
        store.migrate().await?;
        let synapse = Arc::new(Synapse::new(&settings)?);
        let mut reserved = settings.reserved_localparts.clone();
        reserved.push(settings.synapse_admin_user.clone());
        let policy = LocalpartPolicy {
            server_name: settings.server_name.clone(),
            reserved,
        };
        let wake = Arc::new(Notify::new());
        let avatars = Arc::new(AvatarFetcher::new(&settings)?);
        let worker = Arc::new(Worker::new(
            &settings,
            store.clone(),
            Arc::clone(&synapse),
            policy.clone(),
            avatars,
            Arc::clone(&wake),
        ));
        let sync = Arc::new(ProfileSync::new(
            Arc::clone(&settings),
            store.clone(),
            Arc::clone(&worker),
            policy.clone(),
            Arc::clone(&wake),
        )?);
        Ok(Core {
            settings,
            store,
            synapse,
            policy,
            worker,
            sync,
            wake,
        })
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let core = Core::build(settings).await?;
        let settings = Arc::clone(&core.settings);
        let state = web::Data::new(AppState {
            settings: Arc::clone(&settings),
            store: core.store.clone(),
            synapse: Arc::clone(&core.synapse),
            policy: core.policy.clone(),
            wake: core.wake,
            sync: core.sync,
        });
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("cannot listen on {}", settings.bind))?;
        let port = listener.local_addr()?.port();
        let server =
            HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
                .listen(listener)?
                .shutdown_timeout(SHUTDOWN_DEADLINE.as_secs())
                .disable_signals()
                .run();
        tracing::info!(
            bind = %settings.bind, port, database = %settings.database_url_redacted(),
            synapse = %settings.synapse_url, "matrix-provisioner listening"
        );
        Ok(Application {
            port,
            server,
            worker: core.worker,
            store: core.store,
            synapse: core.synapse,
            concurrency: settings.worker_concurrency,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The worker, for tests that drain the queue step by step.
    pub fn worker(&self) -> Arc<Worker> {
        Arc::clone(&self.worker)
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The Synapse client, whose request counts tests read.
    pub fn synapse(&self) -> Arc<Synapse> {
        Arc::clone(&self.synapse)
    }

    /// Serves until `stop` resolves (SIGTERM/SIGINT in production), then
    /// stops accepting, lets in-flight requests and jobs finish within
    /// [`SHUTDOWN_DEADLINE`], and returns.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let workers = tokio::spawn(Arc::clone(&self.worker).run(self.concurrency, shutdown_rx));
        let handle: ServerHandle = self.server.handle();
        let server = tokio::spawn(self.server);
        stop.await;
        tracing::info!("shutting down: no new requests; finishing work in flight");
        let _ = shutdown_tx.send(true);
        let (served, worked) = tokio::join!(
            async {
                handle.stop(true).await;
                server.await
            },
            tokio::time::timeout(SHUTDOWN_DEADLINE, workers)
        );
        if worked.is_err() {
            tracing::warn!("jobs still running at the deadline; their leases will expire and they will be retried");
        }
        self.store.close().await;
        served
            .context("the HTTP server task failed")?
            .context("the HTTP server failed")?;
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot listen for SIGTERM");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
