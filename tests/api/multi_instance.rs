//! The scale-out promise, proven on two real `tollgate serve` processes behind no balancer but
//! the test itself, on one shared MariaDB or PostgreSQL (with Redis, and without where the
//! README promises something without it): the balance admits exactly what it covers in total,
//! a revocation on one reaches the other, the per-user concurrency limit is global with Redis
//! (per instance without), concurrent daily expiry runs expire each subscription once, and a
//! price change made through one is charged by the other.
//!
//! Processes rather than two apps in one test process: nothing (a static, the rustls provider,
//! a runtime) can be shared by accident, so what they share is exactly what a deployment
//! shares — the database and Redis.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::future::join_all;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use tollgate::db::Db;
use tollgate::db::entities::{api_keys, credit_transactions, reservations, subscriptions as subs, usage_logs};

use crate::fake_oauth::Browser;
use crate::helpers::{
    Backend, CRON_SECRET, FakeUpstream, FindByHash, MAX_OUT, MODEL, Mode, PASSWORD, TestDb, UPSTREAM_KEY,
    assert_books_balance, chat_body, eventually, fresh_db, password_user, user_with_balance, worst_case,
};

/// One test per shared database (two processes on one SQLite file is not a deployment the
/// README offers).
macro_rules! on_shared_databases {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(tollgate_test_mysql), ignore = "TEST_MYSQL_URL is not set")]
            async fn mysql() {
                if crate::helpers::Backend::MySql.available() {
                    super::$scenario(crate::helpers::Backend::MySql).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(tollgate_test_postgres), ignore = "TEST_POSTGRES_URL is not set")]
            async fn postgres() {
                if crate::helpers::Backend::Postgres.available() {
                    super::$scenario(crate::helpers::Backend::Postgres).await;
                }
            }
        }
    )+};
}

fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(std::env::var("CI").is_err(), "TEST_REDIS_URL must be set in CI");
            eprintln!("TEST_REDIS_URL is not set: skipping the Redis variant");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What both instances of a deployment share.
#[derive(Clone)]
struct Shared {
    database_url: String,
    upstream: String,
    /// `REDIS_URL` and a `REDIS_PREFIX` of this test's own.
    redis: Option<(String, String)>,
    max_concurrent: u32,
}

impl Shared {
    fn env(&self, cmd: &mut Command) {
        cmd.env("DATABASE_URL", &self.database_url)
            .env("OPENAI_BASE_URL", &self.upstream)
            .env("OPENAI_API_KEY", UPSTREAM_KEY)
            .env("ALLOW_PRIVATE_UPSTREAMS", "true")
            .env("ENCRYPTION_KEY", crate::helpers::ENCRYPTION_KEY)
            .env("CRON_SECRET", CRON_SECRET)
            .env("NEXTAUTH_SECRET", "multi-instance-secret-multi-instance-secret")
            .env("MAX_CONCURRENT_REQUESTS_PER_USER", self.max_concurrent.to_string())
            // The test database is migrated already; the test calls the cron endpoint itself.
            .env("AUTO_MIGRATE", "false")
            .env("SCHEDULER_ENABLED", "false")
            .env("RUST_LOG", "warn");
        match &self.redis {
            // A loaded test machine can be slower than production's timeout; a Redis call that
            // times out makes the instance count alone for a while, which these tests do not test.
            Some((url, prefix)) => {
                cmd.env("REDIS_URL", url).env("REDIS_PREFIX", prefix).env("REDIS_TIMEOUT_MS", "2000")
            }
            None => cmd.env_remove("REDIS_URL").env_remove("REDIS_PREFIX").env_remove("REDIS_TIMEOUT_MS"),
        };
    }
}

/// A `tollgate serve` process; killed when dropped.
struct Instance {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    async fn start(shared: &Shared) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("serve").env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
        shared.env(&mut cmd);
        // reqwest needs the process-wide rustls provider (the app installs it for itself).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let instance = Self { child, base, client };
        let url = format!("{}/healthz", instance.base);
        eventually(30, "the instance answers /healthz", || {
            let url = url.clone();
            async move { reqwest::get(url).await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        instance
    }

    async fn chat(&self, key: &str, stream: bool) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(&chat_body(stream))
            .send()
            .await
            .unwrap()
    }

    async fn cron(&self) -> u64 {
        let res = self
            .client
            .get(format!("{}/api/cron/expire-subscriptions", self.base))
            .bearer_auth(CRON_SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json::<serde_json::Value>().await.unwrap()["affected"].as_u64().unwrap()
    }
}

/// A fresh database with the test model, a fake upstream in `mode`, and two instances.
async fn deployment(
    backend: Backend,
    mode: Mode,
    redis: Option<String>,
    max_concurrent: u32,
) -> (TestDb, FakeUpstream, Shared, Instance, Instance) {
    let db = fresh_db(backend).await;
    crate::helpers::add_model_named(&db.db, MODEL).await;
    let fake = FakeUpstream::start(mode).await.unwrap();
    let shared = Shared {
        database_url: db.url.clone(),
        upstream: fake.base_url(),
        redis: redis.map(|url| (url, format!("tg-multi-{}:", tollgate::crypto::random_token(8)))),
        max_concurrent,
    };
    let a = Instance::start(&shared).await;
    let b = Instance::start(&shared).await;
    (db, fake, shared, a, b)
}

async fn customer(db: &Db, email: &str, balance: i64) -> (i64, String) {
    let user = user_with_balance(db, email, balance).await;
    let (_, key) = tollgate::keys::create(&db.write, user, None).await.unwrap();
    (user, key)
}

/// Waits until `user` has no pending reservation (settlement runs after the response).
async fn settled(db: &Db, user: i64) {
    eventually(20, "every reservation is resolved", || async move {
        reservations::Entity::find()
            .filter(reservations::Column::UserId.eq(user))
            .filter(reservations::Column::State.eq("pending"))
            .count(&db.read)
            .await
            .unwrap()
            == 0
    })
    .await;
}

async fn usage(db: &Db, user: i64) -> Vec<usage_logs::Model> {
    usage_logs::Entity::find()
        .filter(usage_logs::Column::UserId.eq(user))
        .order_by_asc(usage_logs::Column::Id)
        .all(&db.read)
        .await
        .unwrap()
}

/// (a) 100 concurrent requests split across both instances, against a balance covering exactly
/// 9 worst cases: exactly 9 are admitted in total and reach the upstream, and the books balance.
async fn balance_admits_exactly_what_it_covers_across_instances(
    a: &Instance,
    b: &Instance,
    db: &Db,
    fake: &FakeUpstream,
) {
    let worst = worst_case(&chat_body(false), MAX_OUT);
    let (user, key) = customer(db, "nine@example.com", 9 * worst + worst - 1).await;
    let answers = join_all((0..100).map(|i| {
        let (instance, key) = (if i % 2 == 0 { a } else { b }, key.clone());
        async move { instance.chat(&key, false).await.status().as_u16() }
    }))
    .await;
    let admitted = answers.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted, 9, "exactly the covered number is admitted across both instances: {answers:?}");
    assert!(answers.iter().all(|s| [200, 402].contains(s)), "refused for money, never an error: {answers:?}");
    assert_eq!(fake.calls(), 9, "the upstream saw only the admitted requests");
    settled(db, user).await;
    assert_eq!(usage(db, user).await.iter().filter(|r| r.status_code == 200).count(), 9);
    assert_books_balance(db, user).await;
}

/// (b) A key disabled, then one revoked, through instance A (its dashboard API) is refused by B
/// within `within` seconds (1 s with Redis, the 5 s key cache without; one more second of slack
/// for the requests themselves on a busy machine).
async fn revocation_through_a_reaches_b(a: &Instance, b: &Instance, db: &Db, within: u64) {
    let owner = password_user(db, "owner@example.com", "user").await;
    tollgate::billing::ledger::adjust(db, owner.id, 1_000_000, "topup", "test top-up", None).await.unwrap();
    let (_, key) = tollgate::keys::create(&db.write, owner.id, None).await.unwrap();
    // Both instances have the key cached.
    for instance in [a, b] {
        assert_eq!(instance.chat(&key, false).await.status(), 200);
    }
    let browser = Browser::new();
    let form = [("email", "owner@example.com"), ("password", PASSWORD), ("next", "/dashboard")];
    let res = browser.post_form(&format!("{}/api/auth/signin/password", a.base), &form, Some(&a.base)).await;
    assert_eq!(res.headers()["location"], "/dashboard");
    // A second key, disabled (not revoked) through A, is refused the same way.
    let (_, disabled) = tollgate::keys::create(&db.write, owner.id, Some("second")).await.unwrap();
    for instance in [a, b] {
        assert_eq!(instance.chat(&disabled, false).await.status(), 200);
    }
    let id = api_keys::Entity::find_by_hash(&disabled, db).await;
    let res = browser
        .send(
            browser
                .client
                .patch(format!("{}/api/internal/keys/{id}", a.base))
                .header("origin", &a.base)
                .json(&serde_json::json!({ "disabled": true })),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(a.chat(&disabled, false).await.status(), 401, "at once on the disabling instance");
    eventually(within + 1, "the other instance refuses the disabled key", || async {
        b.chat(&disabled, false).await.status() == 401
    })
    .await;

    let id = api_keys::Entity::find_by_hash(&key, db).await;
    let res = browser
        .send(browser.client.delete(format!("{}/api/internal/keys/{id}", a.base)).header("origin", &a.base))
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(a.chat(&key, false).await.status(), 401, "at once on the revoking instance");
    eventually(within + 1, "the other instance refuses the revoked key", || async {
        b.chat(&key, false).await.status() == 401
    })
    .await;
    settled(db, owner.id).await;
    assert_books_balance(db, owner.id).await;
}

/// (d) The daily expiry run at once on both instances (twice each) expires each subscription
/// exactly once.
async fn expiry_on_both_expires_each_once(a: &Instance, b: &Instance, db: &Db) {
    let user = user_with_balance(db, "subs@example.com", 0).await;
    for i in 0..20 {
        let s = tollgate::subscriptions::grant(db, user, &format!("s{i}"), 10, 1, None).await.unwrap();
        subs::Entity::update_many()
            .col_expr(subs::Column::ExpiresAt, Expr::value(tollgate::clock::now_ms() - 1))
            .filter(subs::Column::Id.eq(s.id))
            .exec(&db.write)
            .await
            .unwrap();
    }
    let runs = join_all([a, b, a, b].into_iter().map(Instance::cron)).await;
    assert_eq!(runs.iter().sum::<u64>(), 20, "between them the runs expire each subscription once: {runs:?}");
    let entries = credit_transactions::Entity::find()
        .filter(credit_transactions::Column::UserId.eq(user))
        .filter(credit_transactions::Column::Kind.eq("expire"))
        .count(&db.read)
        .await
        .unwrap();
    assert_eq!(entries, 20);
    assert_books_balance(db, user).await;
}

/// (e) A price change made through A's configuration (the CLI, on A's database and Redis) is
/// charged by B at once with Redis (within the 1 s its in-process layer keeps an entry).
async fn price_change_through_a_is_charged_by_b(b: &Instance, shared: &Shared, db: &Db) {
    let (user, key) = customer(db, "prices@example.com", 1_000_000).await;
    assert_eq!(b.chat(&key, false).await.status(), 200);
    settled(db, user).await;
    let before = usage(db, user).await[0].cost;
    assert!(before > 0);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["model", "set", MODEL, "--input-price", "3", "--output-price", "6"]);
    shared.env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(2, "the other instance charges the new prices", || async {
        assert_eq!(b.chat(&key, false).await.status(), 200);
        settled(db, user).await;
        usage(db, user).await.last().unwrap().cost == 3 * before
    })
    .await;
    assert_books_balance(db, user).await;
}

/// (c) Ten slow streams for one user split across both instances, with a limit of 4: with
/// Redis exactly 4 are admitted at once in total; without it each instance counts its own.
/// Slots come back when the streams end, on both instances.
async fn streams_admitted_at_once(a: &Instance, b: &Instance, db: &Db) -> usize {
    let (user, key) = customer(db, "streams@example.com", 100_000_000).await;
    let responses = join_all((0..10).map(|i| {
        let (instance, key) = (if i % 2 == 0 { a } else { b }, key.clone());
        async move { instance.chat(&key, true).await }
    }))
    .await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
    for r in responses.iter().filter(|r| r.status() == 429) {
        assert_eq!(r.headers()["retry-after"], "1");
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    // The clients go away; each stream still reads its upstream to the end (for its usage),
    // then releases its slot.
    drop(responses);
    eventually(30, "the slots are released on both instances", || async {
        let mut ok = true;
        for instance in [a, b] {
            ok &= instance.chat(&key, false).await.status() == 200;
        }
        ok
    })
    .await;
    settled(db, user).await;
    assert_books_balance(db, user).await;
    admitted
}

async fn shared_budget_revocation_expiry_and_prices_with_redis(backend: Backend) {
    let Some(redis) = redis_url() else { return };
    let (db, fake, shared, a, b) =
        deployment(backend, Mode::DelayHead(Duration::from_secs(8)), Some(redis), 1000).await;
    // Every admitted request waits at the upstream, so all 100 are decided while the 9
    // reservations are held.
    balance_admits_exactly_what_it_covers_across_instances(&a, &b, &db.db, &fake).await;
    fake.set_mode(Mode::Normal);
    revocation_through_a_reaches_b(&a, &b, &db.db, 1).await;
    expiry_on_both_expires_each_once(&a, &b, &db.db).await;
    price_change_through_a_is_charged_by_b(&b, &shared, &db.db).await;
}

async fn shared_budget_revocation_and_expiry_without_redis(backend: Backend) {
    let (db, fake, _shared, a, b) = deployment(backend, Mode::DelayHead(Duration::from_secs(8)), None, 1000).await;
    balance_admits_exactly_what_it_covers_across_instances(&a, &b, &db.db, &fake).await;
    fake.set_mode(Mode::Normal);
    revocation_through_a_reaches_b(&a, &b, &db.db, 5).await;
    expiry_on_both_expires_each_once(&a, &b, &db.db).await;
}

async fn concurrency_limit_is_global_with_redis(backend: Backend) {
    let Some(redis) = redis_url() else { return };
    let (db, fake, _shared, a, b) =
        deployment(backend, Mode::SlowChunks(Duration::from_millis(200)), Some(redis), 4).await;
    fake.set_chunks(40); // 8 s per stream: all ten are decided while four or eight run
    assert_eq!(streams_admitted_at_once(&a, &b, &db.db).await, 4, "the limit holds across both instances");
}

async fn concurrency_limit_is_per_instance_without_redis(backend: Backend) {
    let (db, fake, _shared, a, b) = deployment(backend, Mode::SlowChunks(Duration::from_millis(200)), None, 4).await;
    fake.set_chunks(40); // 8 s per stream: all ten are decided while four or eight run
    assert_eq!(streams_admitted_at_once(&a, &b, &db.db).await, 8, "each instance counts its own, as documented");
}

on_shared_databases!(
    shared_budget_revocation_expiry_and_prices_with_redis,
    shared_budget_revocation_and_expiry_without_redis,
    concurrency_limit_is_global_with_redis,
    concurrency_limit_is_per_instance_without_redis,
);

/// With Redis unreachable or silent, the limit falls back to the per-instance count at once:
/// a request is admitted (never a 500), a second one over the limit on this instance is refused,
/// and slots still come back.
async fn without_an_answering_redis_the_limit_counts_per_instance(redis_url: &str) {
    let g = crate::helpers::spawn_gateway(
        Backend::Sqlite,
        Mode::SlowChunks(Duration::from_millis(200)),
        &[("REDIS_URL", redis_url), ("MAX_CONCURRENT_REQUESTS_PER_USER", "1")],
    )
    .await;
    g.fake.set_chunks(20);
    let (user, key) = g.app.customer("fallback@example.com", 10_000_000).await;
    let first = g.app.chat(&key, &chat_body(true)).await;
    assert_eq!(first.status(), 200);
    let second = g.app.chat(&key, &chat_body(true)).await;
    assert_eq!(second.status(), 429, "the per-instance limit still holds");
    drop(second);
    assert_eq!(crate::helpers::sse_data(first).await.last().map(String::as_str), Some("[DONE]"));
    eventually(10, "the slot is released", || async { g.app.chat(&key, &chat_body(false)).await.status() == 200 })
        .await;
    g.app.settled(user).await;
    assert_books_balance(&g.app.db, user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_unreachable_the_limit_counts_per_instance() {
    without_an_answering_redis_the_limit_counts_per_instance(&format!("redis://127.0.0.1:{}", free_port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_silent_the_limit_counts_per_instance() {
    // Accepts connections and never answers: every command would hang but for the timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    without_an_answering_redis_the_limit_counts_per_instance(&format!("redis://127.0.0.1:{port}")).await;
}

/// Sets a key's own requests-per-minute limit (before any instance has cached the key).
async fn limit_key(db: &Db, key: &str, rpm: i64) {
    let id = api_keys::Entity::find_by_hash(key, db).await;
    let settings = tollgate::keys::SettingsChange { rpm: Some(Some(rpm)), ..Default::default() };
    let change = tollgate::keys::KeyChange { settings, ..Default::default() };
    tollgate::keys::update(db, &tollgate::cache::Cache::in_process(), None, id, change).await.unwrap();
}

/// 30 requests split across both instances against a key limited to 10 per minute: how many
/// were admitted. Every refusal is a 429 with `Retry-After`, never an error.
async fn admitted_of_thirty(a: &Instance, b: &Instance, db: &Db) -> usize {
    let (user, key) = customer(db, "rpm@example.com", 100_000_000).await;
    limit_key(db, &key, 10).await;
    let answers = join_all((0..30).map(|i| {
        let (instance, key) = (if i % 2 == 0 { a } else { b }, key.clone());
        async move {
            let res = instance.chat(&key, false).await;
            let retry = res.headers().get("retry-after").is_some();
            (res.status().as_u16(), retry)
        }
    }))
    .await;
    assert!(answers.iter().all(|(s, retry)| *s == 200 || (*s == 429 && *retry)), "{answers:?}");
    settled(db, user).await;
    assert_books_balance(db, user).await;
    answers.iter().filter(|(s, _)| *s == 200).count()
}

async fn rate_limits_hold_across_instances_with_redis(backend: Backend) {
    let Some(redis) = redis_url() else { return };
    let (db, _fake, _shared, a, b) = deployment(backend, Mode::Normal, Some(redis), 1000).await;
    let admitted = admitted_of_thirty(&a, &b, &db.db).await;
    eprintln!("rate limit across two instances with Redis: {admitted} of 30 admitted at 10 per minute");
    // The sliding estimate floors the previous minute's share: a run that straddles a minute
    // boundary may admit one more.
    assert!((10..=11).contains(&admitted), "10 per minute across both instances, admitted {admitted}");
}

async fn rate_limits_count_per_instance_without_redis(backend: Backend) {
    let (db, _fake, _shared, a, b) = deployment(backend, Mode::Normal, None, 1000).await;
    let admitted = admitted_of_thirty(&a, &b, &db.db).await;
    eprintln!("rate limit on two instances without Redis: {admitted} of 30 admitted at 10 per minute");
    assert!((20..=22).contains(&admitted), "10 per minute on each instance, admitted {admitted}");
}

on_shared_databases!(rate_limits_hold_across_instances_with_redis, rate_limits_count_per_instance_without_redis);
