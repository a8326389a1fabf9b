//! Builds the running service from settings: database (migrated), Synapse
//! client, HTTP server, NATS edge, workers and the sync pass. Tests bind port 0 and
//! read the port back.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::{watch, Notify};

use crate::accounts::Accounts;
use crate::bus::Bus;
use crate::clock::Clock;
use crate::config::Settings;
use crate::http::{self, AppState};
use crate::jobs::Worker;
use crate::nats::Edge;
use crate::oidc::Provider;
use crate::passes::profiles::ProfileSync;
use crate::passes::rooms::RoomSync;
use crate::signing::Signer;
use crate::sso::Sso;
use crate::store::{Backend, Intake, LocalpartPolicy, Store};
use crate::synapse::Synapse;

pub struct Application {
    port: u16,
    server: Server,
    worker: Arc<Worker>,
    store: Store,
    synapse: Arc<Synapse>,
    /// The NATS edge (None: `NATS_URL` is not set).
    edge: Option<Arc<Edge>>,
    concurrency: usize,
    shutdown_timeout: Duration,
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
    pub room_sync: Arc<RoomSync>,
    /// Signs what the OpenID provider issues (None: the provider is off).
    pub signer: Option<Arc<Signer>>,
    /// Wakes an idle worker when a job is queued.
    pub wake: Arc<Notify>,
    /// DAARION's NATS (None: `NATS_URL` is not set).
    pub bus: Option<Arc<Bus>>,
}

impl Core {
    pub async fn build(settings: Settings) -> anyhow::Result<Core> {
        Core::build_with_clock(settings, Clock::system()).await
    }

    /// [`Core::build`] on `clock` (tests move theirs instead of waiting).
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> anyhow::Result<Core> {
        let settings = Arc::new(settings);
        let store = Store::connect(&settings.database_url, settings.db_max_connections).await?;
        store.migrate().await?;
        let synapse = Arc::new(Synapse::new(&settings, Arc::new(store.clone()))?);
        let mut reserved = settings.reserved_localparts.clone();
        reserved.push(settings.synapse_admin_user.clone());
        // People never get names inside the application service's
        // namespaces (CONTRACT.md section 9).
        reserved.push(settings.city.bot.clone());
        let policy = LocalpartPolicy {
            server_name: settings.server_name.clone(),
            reserved,
            reserved_prefixes: vec![settings.city.agent_prefix.clone()],
            sources: settings.localpart_sources.clone(),
            adopt: settings.adopt_localpart_template.clone(),
        };
        let wake = Arc::new(Notify::new());
        let bus = Bus::connect(&settings).await?.map(Arc::new);
        let signer = Signer::load(&settings, &store, &clock).await?.map(Arc::new);
        let worker = Arc::new(
            Worker::new(
                &settings,
                store.clone(),
                Arc::clone(&synapse),
                policy.clone(),
                signer.clone(),
                Arc::clone(&wake),
                clock,
            )?
            .with_bus(bus.clone()),
        );
        let sync = Arc::new(ProfileSync::new(
            Arc::clone(&settings),
            store.clone(),
            Arc::clone(&worker),
            Arc::clone(&wake),
        )?);
        let room_sync = Arc::new(RoomSync::new(
            Arc::clone(&settings),
            store.clone(),
            Arc::clone(&worker),
            Arc::clone(&wake),
        )?);
        Ok(Core {
            settings,
            store,
            synapse,
            policy,
            worker,
            sync,
            room_sync,
            signer,
            wake,
            bus,
        })
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        Application::build_with_clock(settings, Clock::system()).await
    }

    /// [`Application::build`] on `clock` (tests move theirs instead of
    /// waiting).
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> anyhow::Result<Application> {
        let core = Core::build_with_clock(settings, clock.clone()).await?;
        let settings = Arc::clone(&core.settings);
        // SQLite writes one transaction at a time anyway; PostgreSQL overlaps
        // several, each flushing a batch.
        let writers = match (settings.intake_writers, core.store.backend()) {
            (0, Backend::Sqlite) => 1,
            (0, Backend::Postgres) => 8,
            (n, _) => n,
        };
        let intake = Intake::start(core.store.clone(), writers, clock.clone());
        let city_intake = Intake::start(core.store.clone(), writers.min(2), clock.clone());
        let sso = Arc::new(Sso::new(&settings)?);
        let accounts = Arc::new(Accounts::new(
            core.store.clone(),
            Arc::clone(&core.worker),
            crate::accounts::password::login_api(&settings)?,
            &settings.server_name,
        ));
        let edge = core.bus.as_ref().map(|bus| {
            Arc::new(Edge::new(
                Arc::clone(bus),
                intake.clone(),
                // One writer: batches commit in the stream's order, so a
                // room's messages are stored in the order DAARION.city
                // published them (the webhooks' order is their senders').
                Intake::start(core.store.clone(), 1, clock.clone()),
                Arc::clone(&accounts),
                Arc::clone(&core.wake),
                settings.webhook_secrets.clone(),
                settings.city.webhook_secrets.clone(),
            ))
        });
        let state = web::Data::new(AppState {
            settings: Arc::clone(&settings),
            store: core.store.clone(),
            synapse: Arc::clone(&core.synapse),
            policy: core.policy.clone(),
            intake,
            city_intake,
            wake: core.wake,
            accounts,
            bus: core.bus.clone(),
            oidc: core
                .signer
                .as_ref()
                .and_then(|signer| Provider::new(&settings, Arc::clone(signer), core.store.clone()))
                .map(Arc::new),
            sso,
            sync: core.sync,
            room_sync: core.room_sync,
            clock,
            media_links: http::media::links(&settings),
        });
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("cannot listen on {}", settings.bind))?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(http::observe::observe))
                .app_data(state.clone())
                .configure(http::routes)
        })
        .listen(listener)?
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
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
            edge,
            concurrency: settings.worker_concurrency,
            shutdown_timeout: settings.shutdown_timeout,
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
    /// `SHUTDOWN_TIMEOUT_SECONDS`, hands unfinished jobs back to the queue,
    /// and returns.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut workers =
            tokio::spawn(Arc::clone(&self.worker).run(self.concurrency, shutdown_rx.clone()));
        let handle: ServerHandle = self.server.handle();
        let server = tokio::spawn(self.server);
        if self.synapse.appservice_enabled() {
            tokio::spawn(ping_homeserver(Arc::clone(&self.synapse)));
        }
        let mut edge = self
            .edge
            .as_ref()
            .map(|edge| tokio::spawn(Arc::clone(edge).run(shutdown_rx.clone())));
        stop.await;
        tracing::info!(
            deadline_s = self.shutdown_timeout.as_secs(),
            "shutting down: no new requests; finishing work in flight"
        );
        let _ = shutdown_tx.send(true);
        let worker = &self.worker;
        let deadline = self.shutdown_timeout;
        let (served, (), ()) = tokio::join!(
            async {
                handle.stop(true).await;
                server.await
            },
            async {
                // Messages in hand are stored and acknowledged, or handed
                // back; what is not acknowledged comes again anyway.
                if let Some(edge) = edge.as_mut() {
                    if tokio::time::timeout(deadline, &mut *edge).await.is_err() {
                        tracing::warn!("NATS messages still in hand at the deadline");
                        edge.abort();
                    }
                }
            },
            async {
                if tokio::time::timeout(deadline, &mut workers).await.is_err() {
                    tracing::warn!("jobs still running at the deadline: interrupting them");
                    workers.abort();
                    let _ = workers.await;
                }
                // Whatever is still leased to us was interrupted (or its
                // outcome could not be recorded): back to the queue, now.
                match worker.release_leases().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "handed unfinished jobs back to the queue"),
                    Err(e) => tracing::warn!(
                        "cannot hand jobs back ({e:#}); they return when their leases run out"
                    ),
                }
            }
        );
        self.store.close().await;
        served
            .context("the HTTP server task failed")?
            .context("the HTTP server failed")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Asks Synapse, once, to ping the service through the application
/// service link, now that it listens: the log says whether the link works
/// both ways, and Synapse sends at once the transactions it held back while
/// the service was down, instead of after its backoff (up to 512 s). Not
/// repeated: a Synapse that is not up yet sends what it holds on its own
/// schedule once it is.
async fn ping_homeserver(synapse: Arc<Synapse>) {
    match synapse.appservice_ping().await {
        Ok(pong) => tracing::info!(
            duration_ms = pong.duration_ms,
            "Synapse reaches the application service"
        ),
        Err(e) => tracing::warn!("Synapse's ping of the application service failed: {e}"),
    }
}

/// Listens for SIGTERM and SIGINT from now on (so a signal that comes while
/// the service is still starting is not lost) and resolves on the first.
pub fn termination_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!("{name} received");
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
