//! Group commit on MySQL/MariaDB and PostgreSQL: a few writer lanes, each a task that runs the
//! hot-path write jobs queued to it back to back in one transaction and commits them together.
//!
//! A job goes to the lane of its user (`user_id % LANES`), so one user's rows are only ever
//! written by one lane and two lanes never wait for each other's row locks. Within a batch the
//! jobs run in user-id order, so the locks a batch takes follow one order. A batch that hits a
//! deadlock or serialization failure (another transaction on the same rows) is run again whole,
//! a few times; a job that fails otherwise has the batch rolled back and each of its jobs run
//! again in a transaction of its own — one job's failure never costs another its work — and
//! when the database itself is unavailable the whole batch is answered with the error at once.
//! Nobody is answered before their work is committed.

use std::time::Duration;

use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use super::writer::{BoxFuture, JobFn, Output, is_unavailable};
use crate::error::{Error, Result};

/// Writer lanes: enough to keep a few transactions in flight, few enough that each batches.
pub const LANES: usize = 4;
/// Jobs committed together at most.
const MAX_BATCH: usize = 64;
/// Runs of a batch that meets a deadlock or serialization failure, at most.
const MAX_ATTEMPTS: u32 = 8;

struct Job {
    user_id: i64,
    run: JobFn,
    reply: oneshot::Sender<Result<Output>>,
}

#[derive(Clone, Debug)]
pub struct Lanes {
    lanes: Vec<mpsc::Sender<Job>>,
}

impl Lanes {
    /// Starts the lanes on `conn`'s pool. Must be called inside the Tokio runtime.
    pub fn start(conn: &DatabaseConnection) -> Self {
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(run(conn.clone(), rx));
                tx
            })
            .collect();
        Self { lanes }
    }

    /// Runs `job` for `user_id` in its lane's transaction and returns its result once committed.
    pub async fn submit<T, F>(&self, user_id: i64, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> Fn(&'a DatabaseTransaction) -> BoxFuture<'a, Result<T>> + Send + Sync + 'static,
    {
        let run: JobFn = Box::new(move |txn| {
            let fut = job(txn);
            Box::pin(async move { fut.await.map(|v| Box::new(v) as Output) })
        });
        let (reply, answer) = oneshot::channel();
        let lane = &self.lanes[usize::try_from(user_id.unsigned_abs() % LANES as u64).unwrap_or(0)];
        lane.send(Job { user_id, run, reply })
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the database writer lane has stopped")))?;
        let out =
            answer.await.map_err(|_| Error::Internal(anyhow::anyhow!("the database writer lane dropped a job")))??;
        out.downcast::<T>().map(|b| *b).map_err(|_| Error::Internal(anyhow::anyhow!("writer result of the wrong type")))
    }
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
        batch.sort_by_key(|job| job.user_id);
        let started = std::time::Instant::now();
        let jobs: Vec<&Job> = batch.iter().collect();
        let result = with_retries(&conn, &jobs).await;
        crate::observability::db_write_batch(batch.len(), started.elapsed());
        match result {
            Ok(outputs) => {
                for (job, out) in batch.drain(..).zip(outputs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(Error::Database(err)) if is_unavailable(&err) => {
                tracing::warn!(error = %err, jobs = batch.len(), "database unavailable; write batch refused");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(Error::Database(err.clone())));
                }
            }
            Err(err) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(err));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, jobs = batch.len(), "write batch failed; running its jobs one by one");
                let mut unavailable: Option<sea_orm::DbErr> = None;
                for job in batch.drain(..) {
                    let out = match &unavailable {
                        Some(e) => Err(Error::Database(e.clone())),
                        None => with_retries(&conn, &[&job]).await.map(|mut outs| outs.remove(0)),
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

/// Runs `jobs` in one transaction, again while it meets a deadlock or serialization failure.
async fn with_retries(conn: &DatabaseConnection, jobs: &[&Job]) -> Result<Vec<Output>> {
    let mut attempt = 0u32;
    loop {
        match once(conn, jobs).await {
            Err(Error::Database(e)) if super::is_transient(&e) && attempt < MAX_ATTEMPTS => {
                attempt += 1;
                tracing::debug!(attempt, jobs = jobs.len(), error = %e, "write batch conflict; retrying");
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2)).await;
            }
            other => return other,
        }
    }
}

async fn once(conn: &DatabaseConnection, jobs: &[&Job]) -> Result<Vec<Output>> {
    let txn = conn.begin().await?;
    let mut outputs = Vec::with_capacity(jobs.len());
    for job in jobs {
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
