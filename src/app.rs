//! Builds the running service from settings: database (migrated), Synapse
//! client, HTTP server and workers. Tests bind port 0 and read the port back.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::{watch, Notify};

use crate::config::Settings;
use crate::http::{self, AppState};
use crate::jobs::Worker;
use crate::sso::Sso;
use crate::store::{LocalpartPolicy, Store};
use crate::synapse::Synapse;

/// How long in-flight requests and jobs get to finish after SIGTERM.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

pub struct Application {
    port: u16,
    server: Server,
    worker: Arc<Worker>,
    store: Store,
    concurrency: usize,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
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
        let worker = Arc::new(Worker::new(
            &settings,
            store.clone(),
            Arc::clone(&synapse),
            policy.clone(),
            Arc::clone(&wake),
        ));
        let sso = Arc::new(Sso::new(&settings)?);
        let state = web::Data::new(AppState {
            settings: Arc::clone(&settings),
            store: store.clone(),
            synapse,
            policy,
            wake,
            worker: Arc::clone(&worker),
            sso,
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
            worker,
            store,
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
