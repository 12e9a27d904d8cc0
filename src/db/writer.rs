//! SQLite's single writer, as one dedicated thread that runs write jobs back to back and
//! commits several of them in one transaction (group commit).
//!
//! SQLite allows one writer. The writer thread owns its connection outright: the hot-path jobs
//! (reservations and settlements, `submit_sql`) run their statements on it directly, through
//! `rusqlite` with cached prepared statements, in the thread itself — no statement is handed to
//! another thread and back. A batch costs one hand-off in (the job queue), one `BEGIN`, one
//! `COMMIT` and one hand-off out per job (its answer); usage rows written by the jobs of a batch
//! go in as multi-row inserts just before the `COMMIT`. The rarer jobs written against sea-orm
//! (`submit`) run on the writer's sea-orm connection, also batched, in the same thread.
//!
//! A job must leave the transaction consistent whether it succeeds or reports a business
//! outcome (a refused reservation undoes what it took); an `Err` means a database failure:
//! the batch is rolled back and each of its jobs is run again in a transaction of its own, so
//! one job's failure never costs another its work. When the failure is the database itself
//! (locked by another process past the busy timeout, unreachable), running the jobs again
//! would only wait the timeout once per job: the whole batch is answered with the error at
//! once. Nobody is answered before their work is committed, and a job answered with an error
//! was rolled back and is never run again.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use sea_orm::{
    ActiveModelTrait, ActiveValue, DatabaseConnection, DatabaseTransaction, EntityName, EntityTrait, IdenStatic,
    Iterable, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Jobs committed together at most.
const MAX_BATCH: usize = 128;
/// Prepared statements kept per connection: the hot path's, plus a few multi-row insert shapes.
const STATEMENT_CACHE: usize = 64;
/// Rows in one multi-row insert at most (the batch's usage rows go in chunks of these sizes).
const INSERT_CHUNKS: [usize; 5] = [32, 8, 4, 2, 1];

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;
pub(crate) type Output = Box<dyn Any + Send>;
pub(crate) type JobFn = Box<dyn for<'a> Fn(&'a DatabaseTransaction) -> BoxFuture<'a, Result<Output>> + Send + Sync>;
type SqlFn = Box<dyn for<'a> Fn(&'a Sqlite<'a>) -> LocalBoxFuture<'a, Result<Output>> + Send>;

enum Work {
    /// Runs on the sea-orm connection.
    Orm(JobFn),
    /// Runs on the `rusqlite` connection.
    Sql(SqlFn),
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Output>>,
}

#[derive(Clone, Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// Opens the writer's own connection to the SQLite file at `path`, set up as the pools are.
pub fn open(path: &Path, busy: Duration) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(busy)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Checkpoints run on their own thread (`checkpointer`), not inline in the writer's commits.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
    ))?;
    Ok(conn)
}

/// How often the checkpointer copies the write-ahead log into the database file. Each
/// checkpoint ends with a sync, and the file system holds the writer's log appends while it
/// runs: small and frequent stalls it less than large and rare (at one request at a time, p99
/// 2.2–2.5 ms every 25 ms against 3.3–3.5 ms every 100 ms; throughput the same).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);
/// Log frames (pages) after which the log is to start over (16 MiB at 4 KiB pages).
const RESTART_AFTER_FRAMES: i64 = 4_096;
/// Log frames after which the checkpointer itself forces the restart, should the writer's own
/// catch-up keep failing (a reader holding an old snapshot).
const FORCE_RESTART_AFTER_FRAMES: i64 = 8 * RESTART_AFTER_FRAMES;
/// Bytes the log file is cut back to when it starts over.
const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Checkpoints of the write-ahead log, kept off the writer's commits.
///
/// Every `CHECKPOINT_EVERY` a passive checkpoint on a connection and thread of its own copies
/// committed frames into the database file (and syncs it): it never blocks the writer or the
/// readers. But the log only starts over when a write begins after a checkpoint has copied
/// *every* frame, and under steady load the writer has always appended more by then: the log
/// would grow by gigabytes a minute, and opening the database again would mean reading all of
/// it back. So once the log holds `RESTART_AFTER_FRAMES` frames the checkpointer raises
/// `catch_up`, and the writer, between two batches, runs a passive checkpoint itself: it is
/// the only writer, so that one copies the frames since the checkpointer's (a few) and the
/// next batch starts the log over, without any thread waiting on a lock. Should that keep
/// failing (a reader on an old snapshot), at `FORCE_RESTART_AFTER_FRAMES` the checkpointer
/// runs a RESTART, which waits for the writer. Stops when `stop` is set (the writer ended).
struct Checkpoints {
    catch_up: AtomicBool,
    stop: AtomicBool,
}

fn checkpointer(path: &Path, busy: Duration, shared: Arc<Checkpoints>) -> std::io::Result<()> {
    let conn = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
    conn.busy_timeout(busy).map_err(std::io::Error::other)?;
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0;").map_err(std::io::Error::other)?;
    std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
        while !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(CHECKPOINT_EVERY);
            match checkpoint(&conn) {
                Ok(logged) if logged >= RESTART_AFTER_FRAMES => shared.catch_up.store(true, Ordering::Relaxed),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "WAL checkpoint skipped"),
            }
        }
    })?;
    Ok(())
}

/// The checkpointer's checkpoint: passive, or a restart past `FORCE_RESTART_AFTER_FRAMES`.
/// Returns the frames in the log.
fn checkpoint(conn: &rusqlite::Connection) -> rusqlite::Result<i64> {
    let logged = wal_checkpoint(conn, "PASSIVE")?;
    if logged < FORCE_RESTART_AFTER_FRAMES {
        return Ok(logged);
    }
    wal_checkpoint(conn, "RESTART")
}

/// `PRAGMA wal_checkpoint(mode)`; the frames in the log.
fn wal_checkpoint(conn: &rusqlite::Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| row.get::<_, i64>(1))
}

/// The writer's part: when the checkpointer asked, copy the last frames between two batches.
fn catch_up(sql: &rusqlite::Connection, shared: &Checkpoints) {
    if shared.catch_up.swap(false, Ordering::Relaxed)
        && let Err(e) = wal_checkpoint(sql, "PASSIVE")
    {
        tracing::debug!(error = %e, "WAL catch-up checkpoint skipped");
    }
}

impl Writer {
    /// Starts the writer thread on `conn` (a pool of one connection) and `sql` (the file at
    /// `path`), and the checkpointer beside it.
    pub fn start(
        conn: DatabaseConnection,
        sql: rusqlite::Connection,
        path: &Path,
        busy: Duration,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(4096);
        let shared = Arc::new(Checkpoints { catch_up: AtomicBool::new(false), stop: AtomicBool::new(false) });
        checkpointer(path, busy, shared.clone())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || {
            runtime.block_on(run(conn, sql, rx, &shared));
            shared.stop.store(true, Ordering::Relaxed);
        })?;
        Ok(Self { jobs: tx })
    }

    /// Runs `job` in the writer's sea-orm transaction and returns its result once committed.
    pub async fn submit<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a DatabaseTransaction) -> BoxFuture<'a, Result<T>> + Send + Sync + 'static,
    {
        let run: JobFn = Box::new(move |txn| {
            let fut = job(txn);
            Box::pin(async move { fut.await.map(|v| Box::new(v) as Output) })
        });
        self.send(Work::Orm(run)).await
    }

    /// Runs `job` on the writer's own connection, in its transaction, and returns its result once
    /// committed. The future `job` returns is polled on the writer thread only.
    pub async fn submit_sql<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a Sqlite<'a>) -> LocalBoxFuture<'a, Result<T>> + Send + 'static,
    {
        let run: SqlFn = Box::new(move |sql| {
            let fut = job(sql);
            Box::pin(async move { fut.await.map(|v| Box::new(v) as Output) })
        });
        self.send(Work::Sql(run)).await
    }

    async fn send<T: 'static>(&self, work: Work) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { work, reply })
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the database writer has stopped")))?;
        let out = answer.await.map_err(|_| Error::Internal(anyhow::anyhow!("the database writer dropped a job")))??;
        out.downcast::<T>().map(|b| *b).map_err(|_| Error::Internal(anyhow::anyhow!("writer result of the wrong type")))
    }
}

async fn run(
    orm: DatabaseConnection,
    sql: rusqlite::Connection,
    mut rx: mpsc::Receiver<Job>,
    checkpoints: &Checkpoints,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = next_job(&mut rx).await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let jobs = batch.len();
        let (sql_jobs, orm_jobs): (Vec<Job>, Vec<Job>) =
            batch.drain(..).partition(|job| matches!(job.work, Work::Sql(_)));
        if !sql_jobs.is_empty() {
            let conn = Conn::Sql(&sql);
            // The writer's connection is the database's as long as its pools are open: once
            // they are closed (shutdown), it takes no more writes either.
            let result = if orm.get_sqlite_connection_pool().is_closed() {
                Err(Error::Database(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(
                    "the database is closed".into(),
                ))))
            } else {
                run_batch(&conn, &refs(&sql_jobs)).await
            };
            answer(&conn, sql_jobs, result).await;
        }
        if !orm_jobs.is_empty() {
            let conn = Conn::Orm(&orm);
            let result = run_batch(&conn, &refs(&orm_jobs)).await;
            answer(&conn, orm_jobs, result).await;
        }
        crate::observability::db_write_batch(jobs, started.elapsed());
        catch_up(&sql, checkpoints);
    }
}

/// How long the writer looks for the next job before it sleeps. Waking a sleeping thread costs
/// tens of microseconds on a virtual machine, and a request at a time meets a sleeping writer
/// twice (its reservation, its settlement); a writer still looking when the job comes saves
/// that: one request at a time, p50 374 -> 278 µs on this project's 2-core machine. It gives
/// way to any other thread that can run while it looks, so under load it takes no core from the
/// request handlers (the same throughput at 64 connections), and idle it sleeps.
const LOOK_BEFORE_SLEEP: Duration = Duration::from_micros(200);

/// The next job, or `None` once every sender is gone.
async fn next_job(rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
    let until = std::time::Instant::now() + LOOK_BEFORE_SLEEP;
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < until => std::thread::yield_now(),
            Err(mpsc::error::TryRecvError::Empty) => return rx.recv().await,
        }
    }
}

fn refs(jobs: &[Job]) -> Vec<&Job> {
    jobs.iter().collect()
}

/// The connection a batch runs on.
enum Conn<'c> {
    Orm(&'c DatabaseConnection),
    Sql(&'c rusqlite::Connection),
}

/// Answers the jobs of a batch: with their outputs when it committed, else with the database's
/// error when the database is unavailable, else by running each of them alone.
async fn answer(conn: &Conn<'_>, jobs: Vec<Job>, result: Result<Vec<Output>>) {
    match result {
        Ok(outputs) => {
            for (job, out) in jobs.into_iter().zip(outputs) {
                let _ = job.reply.send(Ok(out));
            }
        }
        Err(Error::Database(err)) if is_unavailable(&err) => {
            tracing::warn!(error = %err, jobs = jobs.len(), "database busy or unreachable; write batch refused");
            for job in jobs {
                let _ = job.reply.send(Err(Error::Database(err.clone())));
            }
        }
        Err(err) => {
            tracing::debug!(error = %err, jobs = jobs.len(), "write batch failed; running its jobs one by one");
            let mut unavailable: Option<sea_orm::DbErr> = None;
            for job in jobs {
                // Once the database itself fails, the jobs left would each wait it out again.
                let out = match &unavailable {
                    Some(e) => Err(Error::Database(e.clone())),
                    None => run_batch(conn, &[&job]).await.map(|mut outs| outs.remove(0)),
                };
                if let Err(Error::Database(e)) = &out
                    && is_unavailable(e)
                {
                    unavailable = Some(e.clone());
                }
                let _ = job.reply.send(out);
            }
        }
    }
}

/// Runs `jobs` in one transaction and commits it; on any error nothing of it is left.
async fn run_batch(conn: &Conn<'_>, jobs: &[&Job]) -> Result<Vec<Output>> {
    match conn {
        Conn::Orm(conn) => run_orm(conn, jobs).await,
        Conn::Sql(conn) => run_sql(conn, jobs).await,
    }
}

async fn run_orm(conn: &DatabaseConnection, jobs: &[&Job]) -> Result<Vec<Output>> {
    let txn = conn
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    let mut outputs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Work::Orm(run) = &job.work else { continue };
        match run(&txn).await {
            Ok(out) => outputs.push(out),
            Err(err) => {
                let _ = txn.rollback().await;
                return Err(err);
            }
        }
    }
    txn.commit().await?;
    Ok(outputs)
}

async fn run_sql(conn: &rusqlite::Connection, jobs: &[&Job]) -> Result<Vec<Output>> {
    conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([])).map_err(sql_err)?;
    let sql = Sqlite { conn, later: RefCell::new(Vec::new()) };
    let mut outputs = Vec::with_capacity(jobs.len());
    let mut failed = None;
    for job in jobs {
        let Work::Sql(run) = &job.work else { continue };
        match run(&sql).await {
            Ok(out) => outputs.push(out),
            Err(err) => {
                failed = Some(err);
                break;
            }
        }
    }
    let done = match failed {
        Some(err) => Err(err),
        None => sql
            .flush()
            .and_then(|()| conn.prepare_cached("COMMIT").and_then(|mut s| s.execute([])).map(|_| ()).map_err(sql_err)),
    };
    if let Err(err) = done {
        // A failed COMMIT (SQLITE_BUSY, I/O) leaves the transaction open: end it.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(err);
    }
    Ok(outputs)
}

/// The writer's own connection inside a job's transaction: statements run on it directly.
pub struct Sqlite<'c> {
    conn: &'c rusqlite::Connection,
    /// Rows to insert before the batch commits, each `(table, columns, values)`.
    later: RefCell<Vec<SetRow>>,
}

impl Sqlite<'_> {
    /// Runs a write statement (prepared once, then from the cache); returns the rows changed.
    pub fn execute(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
        self.conn.prepare_cached(sql).and_then(|mut s| s.execute(params)).map_err(sql_err)
    }

    /// The first row of a query, read by `f`; `None` when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(sql_err)?;
        let mut rows = stmt.query(params).map_err(sql_err)?;
        match rows.next().map_err(sql_err)? {
            Some(row) => f(row).map(Some).map_err(sql_err),
            None => Ok(None),
        }
    }

    /// Every row of a query, each read by `f`.
    pub fn query_all<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(sql_err)?;
        stmt.query_map(params, f).and_then(Iterator::collect).map_err(sql_err)
    }

    /// Inserts `row` (its set columns) now; returns the new row's id.
    pub fn insert<A: ActiveModelTrait>(&self, row: &A) -> Result<i64> {
        let (table, columns, values) = set_columns(row)?;
        let sql = insert_sql(table, &columns, 1);
        self.execute(&sql, rusqlite::params_from_iter(values))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Inserts `row` (its set columns) just before the transaction commits, together with the
    /// other rows of the batch of the same shape: one statement for several rows.
    pub fn insert_later<A: ActiveModelTrait>(&self, row: &A) -> Result<()> {
        let row = set_columns(row)?;
        self.later.borrow_mut().push(row);
        Ok(())
    }

    /// Writes the rows `insert_later` kept, as multi-row inserts of runs of the same shape.
    fn flush(&self) -> Result<()> {
        let rows = std::mem::take(&mut *self.later.borrow_mut());
        let mut rest = rows.as_slice();
        while let Some((table, columns, _)) = rest.first() {
            let run = rest.iter().take_while(|(t, c, _)| t == table && c == columns).count();
            let size = INSERT_CHUNKS.into_iter().find(|&n| n <= run).unwrap_or(1);
            let (chunk, tail) = rest.split_at(size);
            let sql = insert_sql(table, columns, size);
            self.execute(&sql, rusqlite::params_from_iter(chunk.iter().flat_map(|(_, _, v)| v.iter())))?;
            rest = tail;
        }
        Ok(())
    }
}

/// A row to insert: its table, its set columns and their values.
type SetRow = (&'static str, Vec<&'static str>, Vec<SqlValue>);

/// The table, set columns and their values of an active model.
fn set_columns<A: ActiveModelTrait>(row: &A) -> Result<SetRow> {
    let table = A::Entity::default().table_name();
    let mut columns = Vec::new();
    let mut values = Vec::new();
    for column in <A::Entity as EntityTrait>::Column::iter() {
        if let ActiveValue::Set(v) | ActiveValue::Unchanged(v) = row.get(column) {
            columns.push(column.as_str());
            values.push(to_sql(v)?);
        }
    }
    Ok((table, columns, values))
}

fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = format!("INSERT INTO \"{table}\" (");
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('"');
        sql.push_str(c);
        sql.push('"');
    }
    sql.push_str(") VALUES ");
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    sql.push_str(&vec![one; rows].join(", "));
    sql
}

/// A sea-orm value as SQLite stores it.
fn to_sql(v: sea_orm::Value) -> Result<SqlValue> {
    use sea_orm::Value as V;
    fn int<T: Into<i64>>(v: Option<T>) -> SqlValue {
        v.map_or(SqlValue::Null, |x| SqlValue::Integer(x.into()))
    }
    Ok(match v {
        V::Bool(b) => int(b),
        V::TinyInt(x) => int(x),
        V::SmallInt(x) => int(x),
        V::Int(x) => int(x),
        V::BigInt(x) => int(x),
        V::TinyUnsigned(x) => int(x),
        V::SmallUnsigned(x) => int(x),
        V::Unsigned(x) => int(x),
        V::BigUnsigned(x) => match x {
            None => SqlValue::Null,
            Some(x) => SqlValue::Integer(
                i64::try_from(x).map_err(|_| Error::Internal(anyhow::anyhow!("{x} does not fit SQLite's integer")))?,
            ),
        },
        V::Float(x) => x.map_or(SqlValue::Null, |x| SqlValue::Real(x.into())),
        V::Double(x) => x.map_or(SqlValue::Null, SqlValue::Real),
        V::String(s) => s.map_or(SqlValue::Null, SqlValue::Text),
        V::Char(c) => c.map_or(SqlValue::Null, |c| SqlValue::Text(c.to_string())),
        V::Bytes(b) => b.map_or(SqlValue::Null, SqlValue::Blob),
        V::Json(j) => j.map_or(SqlValue::Null, |j| SqlValue::Text(j.to_string())),
        other => return Err(Error::Internal(anyhow::anyhow!("no SQLite value for {other:?}"))),
    })
}

/// A `rusqlite` error as the database error the rest of Tollgate knows: a connection error
/// when the database cannot take writes now (busy or locked past the timeout, I/O, full),
/// an execution error otherwise.
pub fn sql_err(err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    let text = format!("sqlite: {err}");
    let unavailable = matches!(
        err.sqlite_error_code(),
        Some(C::DatabaseBusy | C::DatabaseLocked | C::SystemIoFailure | C::DiskFull | C::CannotOpen)
    );
    Error::Database(if unavailable {
        sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(text))
    } else {
        sea_orm::DbErr::Exec(sea_orm::RuntimeErr::Internal(text))
    })
}

/// True when `err` says the database cannot take writes now (SQLITE_BUSY/SQLITE_LOCKED after
/// the busy timeout, no connection in time, an I/O failure), not that one job's statements
/// were wrong: running the same work again at once would fail the same way.
pub(crate) fn is_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    let runtime = match err {
        sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(_)) => return true,
        sea_orm::DbErr::Conn(r) | sea_orm::DbErr::Exec(r) | sea_orm::DbErr::Query(r) => r,
        sea_orm::DbErr::ConnectionAcquire(_) => return true,
        _ => return false,
    };
    let sea_orm::RuntimeErr::SqlxError(e) = runtime else { return false };
    match e.as_ref() {
        Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::Io(_) | Sqlx::WorkerCrashed => true,
        // SQLite's extended result codes keep the primary code in the low byte.
        Sqlx::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        _ => false,
    }
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `writes` writes without a pause on the writer's connection (each adds at least one
    /// page to the log), with the real checkpointer beside it; `catching_up` when the writer
    /// does its part between "batches". Returns the largest the log file was seen.
    fn busy_writes(writes: u64, catching_up: bool) -> rusqlite::Result<u64> {
        let dir = tempfile::tempdir().map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        let path = dir.path().join("busy.db");
        let writer = open(&path, Duration::from_secs(5))?;
        writer.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);")?;
        let shared = Arc::new(Checkpoints { catch_up: AtomicBool::new(false), stop: AtomicBool::new(false) });
        checkpointer(&path, Duration::from_secs(5), shared.clone())
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        let writing = {
            let shared = shared.clone();
            std::thread::spawn(move || -> rusqlite::Result<()> {
                for n in 0..writes {
                    // Each transaction rewrites a page or two, as a settlement batch does.
                    writer
                        .execute("INSERT OR REPLACE INTO t (id, v) VALUES (?1, zeroblob(3000))", [(n % 64) as i64])?;
                    if catching_up {
                        catch_up(&writer, &shared);
                    }
                }
                Ok(())
            })
        };
        let mut most = 0;
        while !writing.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
            most = most.max(std::fs::metadata(path.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0));
        }
        shared.stop.store(true, Ordering::Relaxed);
        writing.join().map_err(|_| rusqlite::Error::InvalidQuery)??;
        Ok(most)
    }

    /// What one checkpoint interval of these writes can add to the log, at most.
    const ONE_INTERVAL: u64 = 48 * 1024 * 1024;

    /// Under writes that never pause, passive checkpoints never catch up and the log would
    /// never start over; the writer's catch-up between batches keeps it near
    /// `RESTART_AFTER_FRAMES`, well under the checkpointer's forced restart.
    #[test]
    fn the_writer_keeps_the_log_small_under_writes_that_never_pause() -> rusqlite::Result<()> {
        let bound = JOURNAL_SIZE_LIMIT.max(RESTART_AFTER_FRAMES as u64 * 4096) + ONE_INTERVAL;
        assert!(bound < FORCE_RESTART_AFTER_FRAMES as u64 * 4096, "the bound would not tell the two apart");
        // Unbounded, these writes would make a log three times the bound.
        let most = busy_writes(3 * bound / 4096, true)?;
        assert!(most <= bound, "the log grew to {most} bytes");
        Ok(())
    }

    /// Should the writer's catch-up never succeed, the checkpointer's restarts still bound it.
    #[test]
    fn the_checkpointer_bounds_the_log_when_the_writer_cannot_catch_up() -> rusqlite::Result<()> {
        let bound = JOURNAL_SIZE_LIMIT.max(FORCE_RESTART_AFTER_FRAMES as u64 * 4096) + ONE_INTERVAL;
        let most = busy_writes(3 * bound / 4096, false)?;
        assert!(most <= bound, "the log grew to {most} bytes");
        Ok(())
    }
}
