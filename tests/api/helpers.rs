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
/// MySQL/MariaDB and PostgreSQL run when `TEST_MYSQL_URL` / `TEST_POSTGRES_URL` are set; in CI
/// (`CI` set) a missing URL fails the test instead of skipping it.
#[macro_export]
macro_rules! on_all_backends {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$scenario($crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mysql() {
                if $crate::helpers::Backend::MySql.available() {
                    super::$scenario($crate::helpers::Backend::MySql).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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
        assert!(std::env::var("CI").is_err(), "{var} must be set in CI: backend tests never skip there");
        eprintln!("{var} is not set: skipping the {self:?} variant");
        false
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
    ]);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

pub const CRON_SECRET: &str = "cron-secret-for-tests-0123456789";

/// The real application, serving on a random port.
pub struct TestApp {
    pub address: String,
    pub db: Db,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _test_db: TestDb,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let test_db = fresh_db(backend).await;
    let config = test_config(&test_db.url, extra);
    let app = Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_token();
    let db = app.state().db.clone();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        db,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        shutdown,
        server,
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

    /// Stops the server the way SIGTERM does and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
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
