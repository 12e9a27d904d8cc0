//! Database connections and migrations, for SQLite, MySQL/MariaDB and PostgreSQL.
//!
//! SQLite has one writer: several pooled connections writing at once would sleep in SQLite's busy
//! handler and wreck latency, so on SQLite every write goes through a pool of one connection and
//! reads use a separate pool. On the server databases both handles are the same pool.

pub mod entities;
pub mod lanes;
pub mod migrations;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sea_orm::sqlx::ConnectOptions as _;
use sea_orm::sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode, SqlxMySqlConnector,
    SqlxPostgresConnector, SqlxSqliteConnector, TransactionOptions, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use self::migrations::Migrator;

/// How long a query waits for a pooled connection (or a locked SQLite file) when the caller
/// names no timeout; `DATABASE_ACQUIRE_TIMEOUT_MS` sets the server's.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The database used when `DATABASE_URL` is not set.
pub const DEFAULT_SQLITE_PATH: &str = "data/tollgate.db";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
    Postgres,
}

impl Backend {
    /// The backend a URL names, by its scheme.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "mysql" | "mariadb" => Ok(Self::MySql),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "" => Err("a URL such as sqlite://data/tollgate.db, mysql://user:pass@host/db or postgres://user@host/db is expected".into()),
            other => Err(format!(
                "unsupported database scheme `{other}:` (supported: sqlite:, mysql:, mariadb:, postgres:, postgresql:)"
            )),
        }
    }
}

/// Handles to one database: `write` for anything that changes data or reads in order to write,
/// `read` for plain queries.
#[derive(Clone, Debug)]
pub struct Db {
    pub backend: Backend,
    pub read: DatabaseConnection,
    pub write: DatabaseConnection,
    /// SQLite only: the writer thread that runs the hot-path write jobs (see `writer`).
    writer: Option<writer::Writer>,
    /// MySQL/PostgreSQL: the writer lanes that batch the hot-path write jobs (see `lanes`).
    lanes: Option<lanes::Lanes>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL: {0}")]
    Url(String),
    #[error("cannot prepare the SQLite directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sea_orm::sqlx::Error),
    #[error("cannot open the SQLite database: {0}")]
    Open(#[source] rusqlite::Error),
    #[error("cannot start the SQLite writer thread: {0}")]
    Writer(#[source] std::io::Error),
}

impl Db {
    /// Opens the pools for `url` with the default acquire timeout. `pool_size` bounds the
    /// connections of MySQL/PostgreSQL and the SQLite read pool.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self, ConnectError> {
        Self::connect_with(url, pool_size, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// As `connect`, waiting at most `acquire` for a pooled connection (and, on SQLite, for a
    /// locked database) before a query fails: an unreachable or locked database answers 503
    /// promptly instead of holding every request.
    pub async fn connect_with(url: &str, pool_size: u32, acquire: Duration) -> Result<Self, ConnectError> {
        let backend = Backend::from_url(url).map_err(ConnectError::Url)?;
        match backend {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|e| ConnectError::Url(format!("invalid SQLite URL: {e}")))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(acquire)
                    .foreign_keys(true)
                    // The writer's checkpointer copies the log into the file (`db::writer`).
                    .pragma("wal_autocheckpoint", "0")
                    .disable_statement_logging();
                // The writer opens the file a second time, on a connection of its own.
                if url.contains(":memory:") || url.contains("mode=memory") {
                    return Err(ConnectError::Url("an in-memory SQLite database is not supported: name a file".into()));
                }
                let file = options.get_filename().to_owned();
                if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
                    && !dir.exists()
                {
                    std::fs::create_dir_all(dir)
                        .map_err(|source| ConnectError::Directory { path: dir.display().to_string(), source })?;
                }
                let write = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(acquire)
                    .connect_with(options.clone())
                    .await
                    .map_err(ConnectError::Connect)?;
                let write = SqlxSqliteConnector::from_sqlx_sqlite_pool(write);
                let own = writer::open(&file, acquire).map_err(ConnectError::Open)?;
                let writer = writer::Writer::start(write.clone(), own, &file, acquire).map_err(ConnectError::Writer)?;
                let read = SqlitePoolOptions::new()
                    .max_connections(pool_size.max(1))
                    .acquire_timeout(acquire)
                    .connect_with(options)
                    .await
                    .map_err(ConnectError::Connect)?;
                Ok(Self {
                    backend,
                    read: SqlxSqliteConnector::from_sqlx_sqlite_pool(read),
                    write,
                    writer: Some(writer),
                    lanes: None,
                })
            }
            Backend::MySql => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                let options = MySqlConnectOptions::from_str(&url)
                    .map_err(|e| ConnectError::Url(format!("invalid MySQL URL: {e}")))?
                    .charset("utf8mb4")
                    .disable_statement_logging();
                let pool = MySqlPoolOptions::new()
                    .max_connections(pool_size.max(1))
                    .acquire_timeout(acquire)
                    // Money statements are single conditional UPDATEs and need no snapshot;
                    // READ COMMITTED avoids InnoDB's gap locks, which deadlock concurrent
                    // reservations and settlements under REPEATABLE READ.
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sea_orm::sqlx::Executor;
                            conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .map_err(ConnectError::Connect)?;
                let conn = SqlxMySqlConnector::from_sqlx_mysql_pool(pool);
                let lanes = Some(lanes::Lanes::start(&conn));
                Ok(Self { backend, read: conn.clone(), write: conn, writer: None, lanes })
            }
            Backend::Postgres => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| ConnectError::Url(format!("invalid PostgreSQL URL: {e}")))?
                    .disable_statement_logging();
                let pool = PgPoolOptions::new()
                    .max_connections(pool_size.max(1))
                    .acquire_timeout(acquire)
                    .connect_with(options)
                    .await
                    .map_err(ConnectError::Connect)?;
                let conn = SqlxPostgresConnector::from_sqlx_postgres_pool(pool);
                let lanes = Some(lanes::Lanes::start(&conn));
                Ok(Self { backend, read: conn.clone(), write: conn, writer: None, lanes })
            }
        }
    }

    /// Applies every pending migration; a no-op when the schema is current.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.write, None).await
    }

    /// Names of the migrations not applied yet.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, DbErr> {
        Ok(Migrator::get_pending_migrations(&self.write).await?.iter().map(|m| m.name().to_owned()).collect())
    }

    /// Starts a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`, so a read inside
    /// it can never be invalidated by another process's write (SQLITE_BUSY_SNAPSHOT).
    pub async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.write
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
    }

    /// Runs `job` in a write transaction and returns its result once committed. On SQLite the
    /// writer thread runs it, possibly committing it together with others; elsewhere it gets a
    /// transaction of its own, run again on deadlocks and serialization failures. `job` may be
    /// called more than once; an `Err` from it rolls its work back.
    pub async fn write<T, F>(&self, job: F) -> crate::error::Result<T>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a DatabaseTransaction) -> writer::BoxFuture<'a, crate::error::Result<T>>
            + Send
            + Sync
            + 'static,
    {
        if let Some(w) = &self.writer {
            return w.submit(job).await;
        }
        retry_transient(|| async {
            let txn = self.begin().await?;
            match job(&txn).await {
                Ok(v) => {
                    txn.commit().await?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = txn.rollback().await;
                    Err(e)
                }
            }
        })
        .await
    }

    /// SQLite only: the writer thread, for jobs written against its own connection
    /// (`writer::Writer::submit_sql`).
    pub fn sqlite_writer(&self) -> Option<&writer::Writer> {
        self.writer.as_ref()
    }

    /// As `write`, for a job that writes only `user_id`'s rows (a reservation, a settlement): on
    /// MySQL/PostgreSQL it runs in the user's writer lane, committed together with the lane's
    /// other jobs (see `lanes`).
    pub async fn write_for<T, F>(&self, user_id: i64, job: F) -> crate::error::Result<T>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a DatabaseTransaction) -> writer::BoxFuture<'a, crate::error::Result<T>>
            + Send
            + Sync
            + 'static,
    {
        match &self.lanes {
            Some(lanes) => lanes.submit(user_id, job).await,
            None => self.write(job).await,
        }
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        self.read.execute_unprepared("SELECT 1").await.is_ok()
    }

    /// Closes the pools, waiting for connections in use to come back.
    pub async fn close(self) {
        let _ = self.read.close().await;
        if self.backend == Backend::Sqlite {
            let _ = self.write.close().await;
        }
    }
}

/// The URL of the zero-setup SQLite database inside `dir`.
pub fn sqlite_url_in(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("tollgate.db").display())
}

/// True when `err` is a deadlock or serialization failure that a retry of the whole transaction
/// resolves (MySQL/MariaDB 1213 and lock wait timeouts, PostgreSQL 40001/40P01).
pub fn is_transient(err: &DbErr) -> bool {
    let (DbErr::Exec(runtime) | DbErr::Query(runtime)) = err else { return false };
    let sea_orm::RuntimeErr::SqlxError(e) = runtime else { return false };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("40001" | "40P01"))
                || d.message().contains("Deadlock found")
                || d.message().contains("Lock wait timeout")
        }
        _ => false,
    }
}

/// Runs `op` (a whole transaction) again while it fails with a transient error, a few times.
pub async fn retry_transient<T, F, Fut>(mut op: F) -> Result<T, crate::error::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::error::Error>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Err(crate::error::Error::Database(e)) if is_transient(&e) && attempt < 8 => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "transaction conflict; retrying");
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5)).await;
            }
            other => return other,
        }
    }
}

/// True when `err` is a unique-constraint violation, on any backend.
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}
