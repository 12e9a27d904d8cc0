//! SQLite's single writer, as one dedicated thread that runs write jobs back to back and
//! commits several of them in one transaction (group commit).
//!
//! SQLite allows one writer. Handing its one connection from request task to request task
//! leaves it idle whenever the task holding it waits for a busy async worker between two
//! statements; under load that, not SQLite, limits throughput. Here the connection never
//! leaves one thread whose only work is running jobs: each job's next statement is issued as
//! soon as the previous one returns, and one `COMMIT` covers a whole batch.
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
use std::future::Future;
use std::pin::Pin;

use sea_orm::{DatabaseConnection, DatabaseTransaction, SqliteTransactionMode, TransactionOptions, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Jobs committed together at most.
const MAX_BATCH: usize = 128;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type Output = Box<dyn Any + Send>;
type JobFn = Box<dyn for<'a> Fn(&'a DatabaseTransaction) -> BoxFuture<'a, Result<Output>> + Send + Sync>;

struct Job {
    run: JobFn,
    reply: oneshot::Sender<Result<Output>>,
}

#[derive(Clone, Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `conn` (a pool of one connection).
    pub fn start(conn: DatabaseConnection) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(4096);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || runtime.block_on(run(conn, rx)))?;
        Ok(Self { jobs: tx })
    }

    /// Runs `job` in the writer's transaction and returns its result once committed.
    pub async fn submit<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a DatabaseTransaction) -> BoxFuture<'a, Result<T>> + Send + Sync + 'static,
    {
        let run: JobFn = Box::new(move |txn| {
            let fut = job(txn);
            Box::pin(async move { fut.await.map(|v| Box::new(v) as Output) })
        });
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { run, reply })
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the database writer has stopped")))?;
        let out = answer.await.map_err(|_| Error::Internal(anyhow::anyhow!("the database writer dropped a job")))??;
        out.downcast::<T>().map(|b| *b).map_err(|_| Error::Internal(anyhow::anyhow!("writer result of the wrong type")))
    }
}

async fn begin(conn: &DatabaseConnection) -> Result<DatabaseTransaction> {
    Ok(conn
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}

async fn run(conn: DatabaseConnection, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = run_batch(&conn, &batch).await;
        crate::observability::db_write_batch(batch.len(), started.elapsed());
        match result {
            Ok(outputs) => {
                for (job, out) in batch.drain(..).zip(outputs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(Error::Database(err)) if is_unavailable(&err) => {
                tracing::warn!(error = %err, jobs = batch.len(), "database busy or unreachable; write batch refused");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(Error::Database(err.clone())));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, jobs = batch.len(), "write batch failed; running its jobs one by one");
                let mut unavailable: Option<sea_orm::DbErr> = None;
                for job in batch.drain(..) {
                    // Once the database itself fails, the jobs left would each wait it out again.
                    let out = match &unavailable {
                        Some(e) => Err(Error::Database(e.clone())),
                        None => run_alone(&conn, &job).await,
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
}

async fn run_batch(conn: &DatabaseConnection, batch: &[Job]) -> Result<Vec<Output>> {
    let txn = begin(conn).await?;
    let mut outputs = Vec::with_capacity(batch.len());
    for job in batch {
        match (job.run)(&txn).await {
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

async fn run_alone(conn: &DatabaseConnection, job: &Job) -> Result<Output> {
    let txn = begin(conn).await?;
    match (job.run)(&txn).await {
        Ok(out) => {
            txn.commit().await?;
            Ok(out)
        }
        Err(err) => {
            let _ = txn.rollback().await;
            Err(err)
        }
    }
}

/// True when `err` says the database cannot take writes now (SQLITE_BUSY/SQLITE_LOCKED after
/// the busy timeout, no connection in time, an I/O failure), not that one job's statements
/// were wrong: running the same work again at once would fail the same way.
fn is_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    let runtime = match err {
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
