//! Test helpers: fresh databases on every backend, `spawn_app()`, and the billing invariant.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, Database};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tollgate::app::Application;
use tollgate::billing::reconcile::reconcile;
use tollgate::config::Config;
use tollgate::db::Db;

/// Generates one test per backend for a scenario `async fn name(backend: Backend)`.
/// MySQL/MariaDB and PostgreSQL run when `TEST_MYSQL_URL` / `TEST_POSTGRES_URL` were set when
/// the tests were built; otherwise their variants are reported as ignored (skipped), never as
/// passed. In CI (`CI` set) a missing URL fails the test instead.
#[macro_export]
macro_rules! on_all_backends {
    // Scenarios that also need Redis (`TEST_REDIS_URL`): ignored (skipped) without it.
    (redis: $($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(tollgate_test_redis), ignore = "TEST_REDIS_URL is not set")]
            async fn sqlite() {
                super::$scenario($crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(any(not(tollgate_test_mysql), not(tollgate_test_redis)), ignore = "TEST_MYSQL_URL or TEST_REDIS_URL is not set")]
            async fn mysql() {
                if $crate::helpers::Backend::MySql.available() {
                    super::$scenario($crate::helpers::Backend::MySql).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(any(not(tollgate_test_postgres), not(tollgate_test_redis)), ignore = "TEST_POSTGRES_URL or TEST_REDIS_URL is not set")]
            async fn postgres() {
                if $crate::helpers::Backend::Postgres.available() {
                    super::$scenario($crate::helpers::Backend::Postgres).await;
                }
            }
        }
    )+};
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$scenario($crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(tollgate_test_mysql), ignore = "TEST_MYSQL_URL is not set")]
            async fn mysql() {
                if $crate::helpers::Backend::MySql.available() {
                    super::$scenario($crate::helpers::Backend::MySql).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(tollgate_test_postgres), ignore = "TEST_POSTGRES_URL is not set")]
            async fn postgres() {
                if $crate::helpers::Backend::Postgres.available() {
                    super::$scenario($crate::helpers::Backend::Postgres).await;
                }
            }
        }
    )+};
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
    Postgres,
}

impl Backend {
    fn env_var(self) -> Option<&'static str> {
        match self {
            Self::Sqlite => None,
            Self::MySql => Some("TEST_MYSQL_URL"),
            Self::Postgres => Some("TEST_POSTGRES_URL"),
        }
    }

    /// Whether this backend's tests should run here. Panics in CI when its URL is missing.
    pub fn available(self) -> bool {
        let Some(var) = self.env_var() else { return true };
        if std::env::var(var).is_ok_and(|v| !v.is_empty()) {
            return true;
        }
        // Reached only when the URL was set at build time but not now.
        assert!(std::env::var("CI").is_err(), "{var} must be set in CI: backend tests never skip there");
        panic!("{var} was set when the tests were built but is not set now: rebuild or set it");
    }
}

/// A fresh, empty, migrated database that lives as long as this value.
pub struct TestDb {
    pub url: String,
    pub db: Db,
    _dir: Option<TempDir>,
}

fn unique_name() -> String {
    format!("tg_{}", tollgate::crypto::random_token(9).to_lowercase().replace(['-', '_'], "x"))
}

/// Creates an empty database on `backend` (not migrated).
pub async fn empty_db_url(backend: Backend) -> (String, Option<TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (tollgate::db::sqlite_url_in(dir.path()), Some(dir))
        }
        Backend::MySql | Backend::Postgres => {
            let admin_url = std::env::var(backend.env_var().unwrap()).unwrap();
            let name = unique_name();
            let admin = Database::connect(&admin_url).await.unwrap();
            admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
            admin.close().await.unwrap();
            let mut url = url::Url::parse(&admin_url).unwrap();
            url.set_path(&format!("/{name}"));
            (url.to_string(), None)
        }
    }
}

pub async fn fresh_db(backend: Backend) -> TestDb {
    let (url, dir) = empty_db_url(backend).await;
    let db = Db::connect(&url, 20).await.unwrap();
    db.migrate().await.unwrap();
    TestDb { url, db, _dir: dir }
}

/// Settings for a test app: port 0, the given database, a known cron secret.
pub fn test_config(database_url: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), database_url.to_owned()),
        ("LISTEN_ADDR".into(), "127.0.0.1:0".into()),
        ("CRON_SECRET".into(), CRON_SECRET.into()),
        ("NEXTAUTH_SECRET".into(), "test-secret-test-secret-test-secret-0123".into()),
        ("SCHEDULER_ENABLED".into(), "false".into()),
        // Fake upstreams listen on loopback; channel keys are stored encrypted.
        ("ALLOW_PRIVATE_UPSTREAMS".into(), "true".into()),
        ("ENCRYPTION_KEY".into(), ENCRYPTION_KEY.into()),
    ]);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

/// The `ENCRYPTION_KEY` of test apps (32 bytes, base64).
pub const ENCRYPTION_KEY: &str = "dGVzdC1lbmNyeXB0aW9uLWtleS0zMi1ieXRlcy0wMDE=";

pub const CRON_SECRET: &str = "cron-secret-for-tests-0123456789";

/// The real application, serving on a random port.
pub struct TestApp {
    pub address: String,
    pub db: Db,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub database_url: String,
    app_cache: tollgate::cache::Cache,
    _test_db: Option<TestDb>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let test_db = fresh_db(backend).await;
    let url = test_db.url.clone();
    spawn_on(&url, Some(test_db), extra).await
}

/// Another instance on the same database (as behind a load balancer).
pub async fn spawn_instance(database_url: &str, extra: &[(&str, &str)]) -> TestApp {
    spawn_on(database_url, None, extra).await
}

async fn spawn_on(database_url: &str, test_db: Option<TestDb>, extra: &[(&str, &str)]) -> TestApp {
    let config = test_config(database_url, extra);
    let app = Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_token();
    let db = app.state().db.clone();
    let app_cache = app.state().cache.clone();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        db,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        shutdown,
        server,
        database_url: database_url.to_owned(),
        app_cache,
        _test_db: test_db,
    }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.unwrap()
    }

    pub async fn cron(&self, authorization: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}/api/cron/expire-subscriptions", self.address));
        if let Some(value) = authorization {
            req = req.header("Authorization", value);
        }
        req.send().await.unwrap()
    }

    /// The app's own cache, for changes made from the test.
    pub fn cache(&self) -> tollgate::cache::Cache {
        self.app_cache.clone()
    }

    /// Stops the server the way SIGTERM does and waits for it. The database is kept for as long
    /// as the returned value lives.
    pub async fn stop(self) -> Option<TestDb> {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        self._test_db
    }
}

/// Creates a user with a balance of `balance` micro-units (through the ledger).
pub async fn user_with_balance(db: &Db, email: &str, balance: i64) -> i64 {
    let txn = db.begin().await.unwrap();
    let user = tollgate::accounts::create_user(
        &txn,
        tollgate::accounts::NewUser { email, name: None, role: "user", password_hash: None, signup_credit: 0 },
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    if balance > 0 {
        tollgate::billing::ledger::adjust(db, user.id, balance, "topup", "test top-up", None).await.unwrap();
    }
    user.id
}

/// Asserts the billing invariant for `user_id`.
pub async fn assert_books_balance(db: &Db, user_id: i64) {
    let r = reconcile(&db.read, user_id).await.unwrap();
    if let Err(problem) = r.check() {
        panic!("billing invariant broken for user {user_id}: {problem}");
    }
}

pub use tollgate_fake_upstream::{FakeUpstream, Mode};

/// The upstream credential tests configure; it must never reach a client or the database.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789abcdef";
/// The test model: 1 micro-unit per prompt token, 2 per completion token, at most 100 out.
pub const MODEL: &str = "test-model";
pub const MAX_OUT: i64 = 100;

/// The app in front of a fake upstream, with the test model in the catalogue.
pub struct Gateway {
    pub app: TestApp,
    pub fake: FakeUpstream,
}

pub async fn spawn_gateway(backend: Backend, mode: Mode, extra: &[(&str, &str)]) -> Gateway {
    let fake = FakeUpstream::start(mode).await.unwrap();
    let base = fake.base_url();
    let mut vars: Vec<(&str, &str)> = vec![("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", UPSTREAM_KEY)];
    vars.extend_from_slice(extra);
    let app = spawn_app_with(backend, &vars).await;
    add_test_model(&app).await;
    Gateway { app, fake }
}

pub async fn add_test_model(app: &TestApp) {
    add_model_named(&app.db, MODEL).await;
}

/// Adds the model `name`: upstream `upstream-model`, 1 micro-unit per prompt token, 2 per
/// completion token, at most `MAX_OUT` out.
pub async fn add_model_named(db: &Db, name: &str) {
    tollgate::models::set(
        db,
        &tollgate::cache::Cache::in_process(),
        name,
        tollgate::models::ModelChange {
            upstream_model: Some("upstream-model".into()),
            input_price: Some(1_000_000),
            output_price: Some(2_000_000),
            max_output_tokens: Some(MAX_OUT),
            context_window: Some(100_000),
            enabled: Some(true),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
}

/// A chat body for the test model.
pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({ "model": MODEL, "stream": stream, "messages": [{ "role": "user", "content": "Say hello." }] })
}

/// The prompt estimate of `body`, tokens.
pub fn prompt_tokens(body: &serde_json::Value) -> i64 {
    tollgate::gateway::tokens::count_prompt("upstream-model", body.as_object().unwrap())
}

/// The worst case the gateway reserves for the chat request `body`, micro-units: every prompt
/// token at the dearest price it may be billed at — a chat request writes no prompt cache, so
/// the input price (cache reads default to it): 1 per token — and the output cap at 2 per token.
pub fn worst_case(body: &serde_json::Value, max_out: i64) -> i64 {
    prompt_tokens(body) + 2 * max_out
}

impl TestApp {
    /// A user with `balance` micro-units and one key.
    pub async fn customer(&self, email: &str, balance: i64) -> (i64, String) {
        let user = user_with_balance(&self.db, email, balance).await;
        let (_, key) = tollgate::keys::create(&self.db.write, user, None).await.unwrap();
        (user, key)
    }

    pub async fn chat(&self, key: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.address))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Waits until `user` has no pending reservation (settlement runs after the response).
    pub async fn settled(&self, user: i64) {
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        use tollgate::db::entities::reservations;
        for _ in 0..200 {
            let pending = reservations::Entity::find()
                .filter(reservations::Column::UserId.eq(user))
                .filter(reservations::Column::State.eq("pending"))
                .count(&self.db.read)
                .await
                .unwrap();
            if pending == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("user {user} still has pending reservations");
    }

    pub async fn balance(&self, user: i64) -> i64 {
        tollgate::billing::balance::amount(&self.db.read, user).await.unwrap()
    }

    /// The usage rows of `user`, oldest first.
    pub async fn usage(&self, user: i64) -> Vec<tollgate::db::entities::usage_logs::Model> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
        use tollgate::db::entities::usage_logs;
        usage_logs::Entity::find()
            .filter(usage_logs::Column::UserId.eq(user))
            .order_by_asc(usage_logs::Column::Id)
            .all(&self.db.read)
            .await
            .unwrap()
    }
}

/// Polls `check` every 50 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Reads an SSE response to the end and returns its `data:` payloads.
pub async fn sse_data(res: reqwest::Response) -> Vec<String> {
    let text = res.text().await.unwrap();
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ").map(str::to_owned)).collect()
}

/// Test-only lookups on entities.
pub trait FindByHash {
    /// The id of the key whose plaintext is `key`.
    fn find_by_hash(key: &str, db: &Db) -> impl std::future::Future<Output = i64>;
}

impl FindByHash for tollgate::db::entities::api_keys::Entity {
    async fn find_by_hash(key: &str, db: &Db) -> i64 {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        use tollgate::db::entities::api_keys;
        api_keys::Entity::find()
            .filter(api_keys::Column::KeyHash.eq(tollgate::keys::hash(key)))
            .one(&db.read)
            .await
            .unwrap()
            .unwrap()
            .id
    }
}

/// The password every test user created by `password_user` has.
pub const PASSWORD: &str = "correct horse battery";

/// Creates a user who signs in with `PASSWORD`.
pub async fn password_user(db: &Db, email: &str, role: &str) -> tollgate::db::entities::users::Model {
    let hash = tollgate::accounts::password::hash(PASSWORD.into()).await.unwrap();
    tollgate::accounts::create_user(
        &db.write,
        tollgate::accounts::NewUser { email, name: None, role, password_hash: Some(hash), signup_credit: 0 },
    )
    .await
    .unwrap()
}

/// A reservation request with no key or model, at `prices`.
pub fn reserve_request(
    id: &str,
    user: i64,
    prompt: i64,
    max_out: i64,
    prices: tollgate::billing::Prices,
) -> tollgate::billing::ReserveRequest<'_> {
    tollgate::billing::ReserveRequest {
        request_id: id,
        user_id: user,
        key_id: None,
        model_id: None,
        prompt_tokens: prompt,
        max_completion_tokens: max_out,
        prices,
        ..tollgate::billing::ReserveRequest::default()
    }
}

/// Puts the `default` channel back as `spawn_gateway` made it (enabled, with `UPSTREAM_KEY`)
/// after the upstream refused its key.
pub async fn restore_default_channel(app: &TestApp) {
    let channel = tollgate::channels::find_by_name(&app.db, tollgate::channels::DEFAULT_CHANNEL_NAME).await.unwrap();
    let settings = tollgate::channels::Settings {
        sealer: Some(tollgate::channels::seal::Sealer::parse(ENCRYPTION_KEY).unwrap()),
        allow_private: true,
    };
    let patch = tollgate::channels::ChannelPatch {
        enabled: Some(true),
        keys: Some(tollgate::channels::KeyChange::Replace(vec![tollgate::config::Secret::new(UPSTREAM_KEY)])),
        ..Default::default()
    };
    tollgate::channels::update(&app.db, &app.cache(), &settings, &tollgate::audit::Actor::system(), channel.id, patch)
        .await
        .unwrap();
}
