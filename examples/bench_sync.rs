//! Benchmark of the profile sync pass (issue 4). Run it through
//! `scripts/bench-sync.sh`, which starts a Synapse (and PostgreSQL if asked)
//! on 127.0.0.1 and passes their addresses here. Measures, in one run:
//!
//! 1. Backfill: people per second created by passes, next to Synapse's raw
//!    rate for the same admin PUT at the same concurrency, in alternating
//!    rounds (the machine's load changes; rounds share it), with the CPU
//!    time Synapse and this process spent per person.
//! 2. A pass over PEOPLE people of whom nothing changed: time and Synapse
//!    requests, as an incremental pass that reads everyone (no drift
//!    check) and as a full pass (with the drift check's list reads).
//! 3. The same with 1% renamed: a full pass, then an incremental pass
//!    after another 1%.
//!
//! Only the backfilled people exist in Synapse; the others are seeded
//! straight into our database and the fake user API as already provisioned
//! (creating 100,000 accounts would take most of an hour), which is what a
//! pass over unchanged people looks at anyway.

#[path = "../tests/integration/fakes.rs"]
mod fakes;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fakes::{FakeUser, FakeUserApi};
use futures_util::stream::{self, StreamExt};
use matrix_provisioner::app::Core;
use matrix_provisioner::config::Settings;
use matrix_provisioner::passes::profiles::Summary;
use matrix_provisioner::synapse::{random_password, Synapse};
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;

const API_TOKEN: &str = "bench-user-api-token";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &str) -> String {
    env(name).unwrap_or_else(|| panic!("{name} is not set: run scripts/bench-sync.sh"))
}

fn number(name: &str, default: usize) -> usize {
    env(name).map_or(default, |v| v.parse().expect("a number"))
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn now_ms() -> i64 {
    matrix_provisioner::now_ms()
}

/// One figure of the report, printed as it is measured.
struct Report {
    rows: Vec<Value>,
}

impl Report {
    fn add(&mut self, name: &str, figures: Value) {
        println!("{name:<44} {figures}   (load {})", load());
        let mut row = figures;
        row["measurement"] = json!(name);
        row["load_after"] = json!(load());
        self.rows.push(row);
    }
}

/// Synapse's admin API for the raw measurement, with an admin of its own.
struct RawSynapse {
    url: String,
    server_name: String,
    token: String,
    http: reqwest::Client,
}

impl RawSynapse {
    /// A client of its own, with an admin account of its own (registered
    /// through the service's client: how is not what is measured).
    async fn new(url: &str, server_name: &str, synapse: &Synapse) -> RawSynapse {
        let user = format!("bench-raw-{}", now_ms());
        let registered = synapse
            .register(&user, &random_password(), None, true, false)
            .await
            .expect("the raw side's admin account");
        RawSynapse {
            url: url.to_string(),
            server_name: server_name.to_string(),
            token: registered
                .access_token
                .expect("an admin token")
                .expose()
                .to_string(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// `n` admin PUT-creates with `concurrency` in flight, the body our
    /// backfill sends (display name and external id); returns people/s.
    async fn create_rate(&self, prefix: &str, n: usize, concurrency: usize) -> f64 {
        let started = Instant::now();
        let statuses: Vec<u16> = stream::iter(0..n)
            .map(|i| {
                let url = format!(
                    "{}/_synapse/admin/v2/users/@{prefix}-{i}:{}",
                    self.url, self.server_name
                );
                let body = json!({"displayname": format!("Raw {i}"),
                    "external_ids": [{"auth_provider": "bench-raw", "external_id": format!("{prefix}-{i}")}]});
                async move {
                    self.http
                        .put(url)
                        .bearer_auth(&self.token)
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed();
        assert!(
            statuses.iter().all(|s| *s == 201),
            "raw creates failed: {statuses:?}"
        );
        n as f64 / elapsed.as_secs_f64()
    }

    async fn version(&self) -> String {
        let v: Value = self
            .http
            .get(format!("{}/_synapse/admin/v1/server_version", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        v["server_version"].as_str().unwrap_or("?").to_string()
    }
}

async fn pass(core: &Core, full: bool) -> Summary {
    let summary = core.sync.run(full).await.expect("the pass runs");
    assert!(summary.errors.is_empty(), "{summary:?}");
    assert_eq!((summary.failed, summary.unfinished), (0, 0), "{summary:?}");
    summary
}

fn figures(s: &Summary) -> Value {
    json!({
        "seconds": s.duration_ms as f64 / 1000.0,
        "checked": s.checked, "changed": s.changed, "created": s.created,
        "synapse_requests": s.synapse_requests, "synapse_writes": s.synapse_writes,
    })
}

#[tokio::main]
async fn main() {
    let synapse_url = required("MP_BENCH_SYNAPSE_URL");
    let server_name = required("MP_BENCH_SERVER_NAME");
    let secret = required("MP_BENCH_REGISTRATION_SECRET");
    let people = number("PEOPLE", 100_000);
    let backfill = number("BACKFILL", 8_000).min(people);
    let concurrency = number("CONCURRENCY", 16);
    let dir = tempfile::tempdir().unwrap();
    let database_url = env("BENCH_DATABASE_URL")
        .unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.path().display()));

    let api = FakeUserApi::start(API_TOKEN);
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", database_url.clone()),
        ("SYNAPSE_URL", synapse_url.clone()),
        ("SYNAPSE_SERVER_NAME", server_name.clone()),
        ("SYNAPSE_REGISTRATION_SECRET", secret),
        ("SYNAPSE_ADMIN_USER", "bench-provisioner".into()),
        ("SYNAPSE_MAX_CONCURRENCY", concurrency.to_string()),
        ("AUTH_API_URL", api.url.clone()),
        ("AUTH_API_TOKEN", API_TOKEN.into()),
        (
            "PROFILE_DRIFT",
            env("PROFILE_DRIFT").unwrap_or_else(|| "enforce".into()),
        ),
        ("SYNC_PAGE_SIZE", number("SYNC_PAGE_SIZE", 500).to_string()),
    ]);
    if let Some(log) = env("RUST_LOG") {
        vars.insert("RUST_LOG", log);
        matrix_provisioner::telemetry::init(matrix_provisioner::config::LogFormat::Text);
    }
    let settings = Settings::from_lookup(|k| vars.get(k).cloned()).expect("bench settings");
    let core = Core::build(settings).await.expect("the service builds");
    let raw = RawSynapse::new(&synapse_url, &server_name, &core.synapse).await;

    println!("# matrix-provisioner sync benchmark");
    println!(
        "# machine: {} cores, {}; load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        load()
    );
    println!(
        "# Synapse {} (SQLite, bcrypt_rounds={}), our database: {}, concurrency {concurrency}, \
         people {people}, backfill {backfill}",
        raw.version().await,
        env("BCRYPT_ROUNDS").unwrap_or_else(|| "?".into()),
        if database_url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        },
    );
    let mut report = Report { rows: Vec::new() };
    let run = now_ms();

    // --- 1. backfill next to the raw admin PUT, in alternating rounds so
    // that a change in the machine's load hits both alike.
    // Warm up both paths (admin logins, connection pools, Synapse caches).
    raw.create_rate(&format!("warm{run}"), 20, concurrency)
        .await;
    // Ours too: the service's admin account logs in (a bcrypt check in
    // Synapse) on its first admin request, once per process, not per pass.
    let warm_at = now_ms();
    api.put_all((0..20).map(|i| {
        FakeUser::new(
            &format!("u_ourwarm{run}_{i}"),
            &format!("ourwarm{run}-{i}"),
            "Warm",
            warm_at,
        )
    }));
    assert_eq!(pass(&core, false).await.created, 20);
    let t = now_ms() - 3_600_000;
    let rounds = number("ROUNDS", 8).clamp(1, backfill.max(1));
    let synapse_pid = env("MP_BENCH_SYNAPSE_PID");
    let (mut raw_s, mut ours_s) = (0.0, 0.0);
    let (mut raw_cpu, mut ours_cpu, mut our_own_cpu) = (0.0, 0.0, 0.0);
    let (mut created, mut requests, mut ratios) = (0, 0, Vec::new());
    for r in 0..rounds {
        let range = r * backfill / rounds..(r + 1) * backfill / rounds;
        let n = range.len();
        // Updated now: each round's pass reads what changed since the last.
        let updated = now_ms();
        api.put_all(range.map(|i| {
            FakeUser::new(
                &format!("u_bf{run}_{i}"),
                &format!("bf{run}-{i}"),
                &format!("Person {i}"),
                updated,
            )
        }));
        // Which goes first alternates, so neither always meets Synapse
        // fresh. Before and after each, Synapse finishes what earlier
        // requests left for later (user directory, stats), so each part is
        // charged only for its own work.
        let (mut raw_round, mut ours_round) = (0.0, 0.0);
        for raw_turn in [r % 2 == 0, r % 2 == 1] {
            settle(synapse_pid.as_deref()).await;
            let before = cpu_seconds(synapse_pid.as_deref());
            if raw_turn {
                let started = Instant::now();
                raw.create_rate(&format!("raw{run}r{r}"), n, concurrency)
                    .await;
                raw_round = started.elapsed().as_secs_f64();
            } else {
                let backfilled = pass(&core, false).await;
                assert_eq!(backfilled.created as usize, n, "{backfilled:?}");
                ours_round = backfilled.duration_ms as f64 / 1000.0;
                requests += backfilled.synapse_requests;
            }
            settle(synapse_pid.as_deref()).await;
            let after = cpu_seconds(synapse_pid.as_deref());
            if raw_turn {
                raw_cpu += after.0 - before.0;
            } else {
                ours_cpu += after.0 - before.0;
                our_own_cpu += after.1 - before.1;
            }
        }
        raw_s += raw_round;
        ours_s += ours_round;
        created += n;
        ratios.push(round(100.0 * raw_round / ours_round));
    }
    let ours = created as f64 / ours_s;
    let raw_rate = created as f64 / raw_s;
    report.add(
        "backfill (admin API, via the sync pass)",
        json!({"people": created, "people_per_s": round(ours), "synapse_requests": requests,
               "synapse_cpu_ms_per_person": round(1000.0 * ours_cpu / created as f64),
               "our_cpu_ms_per_person": round(1000.0 * our_own_cpu / created as f64)}),
    );
    report.add(
        "raw admin PUT create, same concurrency",
        json!({"people": created, "people_per_s": round(raw_rate),
               "synapse_cpu_ms_per_person": round(1000.0 * raw_cpu / created as f64)}),
    );
    report.add(
        "backfill / raw",
        json!({"percent": round(100.0 * ours / raw_rate), "per_round": ratios}),
    );

    // --- 2. seed the rest as already provisioned, nothing changed.
    let seeded = seed(&database_url, &api, run, backfill, people, t).await;
    report.add(
        "seed (ours + fake API, not timed as a pass)",
        json!({"people": seeded}),
    );
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&any_url(&database_url))
        .await
        .unwrap();
    // No watermark: an incremental pass reads everyone (no drift check).
    sqlx::query("UPDATE sync_state SET watermark = NULL")
        .execute(&pool)
        .await
        .unwrap();
    let unchanged = pass(&core, false).await;
    // Everyone in the user API: the people, and the warm-up's.
    assert_eq!(unchanged.checked as usize, api.all().len());
    report.add(
        &format!("{people} unchanged, incremental (reads all)"),
        figures(&unchanged),
    );
    let unchanged_full = pass(&core, true).await;
    report.add(
        &format!("{people} unchanged, --full (drift check)"),
        figures(&unchanged_full),
    );

    // --- 3. 1% renamed.
    let renamed = (people / 100).min(backfill);
    rename(&api, run, 0..renamed, "Renamed");
    let full = pass(&core, true).await;
    assert_eq!(full.changed as usize, renamed, "{full:?}");
    report.add(
        &format!("{people}, 1% renamed ({renamed}), --full"),
        figures(&full),
    );
    rename(&api, run, 0..renamed, "Again");
    let incremental = pass(&core, false).await;
    assert_eq!(incremental.changed as usize, renamed, "{incremental:?}");
    report.add(
        &format!("{people}, 1% renamed ({renamed}), incremental"),
        figures(&incremental),
    );

    println!("# JSON");
    println!("{}", serde_json::to_string(&report.rows).unwrap());
    pool.close().await;
    core.store.close().await;
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn rename(api: &FakeUserApi, run: i64, range: std::ops::Range<usize>, prefix: &str) {
    let now = now_ms();
    let renamed: Vec<FakeUser> = range
        .map(|i| {
            let mut u = api.get(&format!("u_bf{run}_{i}")).unwrap();
            u.display_name = Some(format!("{prefix} {i}"));
            u.updated_at_ms = now;
            u
        })
        .collect();
    api.put_all(renamed);
}

/// People `backfill..people` straight into our database (as provisioned,
/// what a pass would have left) and into the fake API, unchanged since `t`.
async fn seed(url: &str, api: &FakeUserApi, run: i64, from: usize, to: usize, t: i64) -> usize {
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&any_url(url))
        .await
        .unwrap();
    let started = Instant::now();
    let mut tx = pool.begin().await.unwrap();
    let ids: Vec<usize> = (from..to).collect();
    for chunk in ids.chunks(200) {
        let mut sql = String::from(
            "INSERT INTO people (user_id, localpart, state, username, username_at, display_name, \
             display_name_at, avatar_url_at, lifecycle_at, account, applied_display_name, \
             create_via, created_at, updated_at) VALUES ",
        );
        let rows: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "('u_seed{run}_{i}', 'seed{run}-{i}', 'provisioned', 'seed{run}-{i}', {t}, \
                     'Seeded {i}', {t}, {t}, {t}, 'active', 'Seeded {i}', 'admin', {t}, {t})"
                )
            })
            .collect();
        sql.push_str(&rows.join(", "));
        sqlx::query(&sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    pool.close().await;
    api.put_all(ids.iter().map(|i| {
        FakeUser::new(
            &format!("u_seed{run}_{i}"),
            &format!("seed{run}-{i}"),
            &format!("Seeded {i}"),
            t,
        )
    }));
    eprintln!("seeded {} people in {:?}", ids.len(), started.elapsed());
    ids.len()
}

/// `url` for a pool of our own (the Any driver needs its drivers installed).
fn any_url(url: &str) -> String {
    sqlx::any::install_default_drivers();
    url.to_string()
}

/// Waits until Synapse has no work left over from earlier requests: its
/// CPU stays at one clock tick or less per 100 ms for 300 ms (20 s at most).
async fn settle(synapse_pid: Option<&str>) {
    if synapse_pid.is_none() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < deadline {
        let before = cpu_seconds(synapse_pid).0;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let used = cpu_seconds(synapse_pid).0 - before;
        quiet = if used <= 0.011 { quiet + 1 } else { 0 };
    }
}

/// CPU seconds (user + system) used so far by Synapse (if its pid is
/// known; 0 otherwise) and by this process.
fn cpu_seconds(synapse_pid: Option<&str>) -> (f64, f64) {
    let of = |path: String| -> f64 {
        let Ok(stat) = std::fs::read_to_string(path) else {
            return 0.0;
        };
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        ticks / 100.0 // USER_HZ
    };
    (
        synapse_pid.map_or(0.0, |pid| of(format!("/proc/{pid}/stat"))),
        of("/proc/self/stat".to_string()),
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
