//! Usage rows for refused calls (402, 429, 400 …), bounded: the first refusal of a key with a
//! given status and model in a minute writes a row; the repeats in that minute only raise its
//! `request_count`, written by a flusher once a second. One customer hammering with an empty
//! balance therefore adds at most one row per key, status, model and minute, not one per call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::billing::{Charge, UsageLog, usage_row};
use crate::clock::now_ms;
use crate::db::Db;
use crate::db::entities::usage_logs;

/// Entries kept at most; beyond, new refusal kinds are counted only in the log line.
const MAX_ENTRIES: usize = 100_000;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Kind {
    user_id: i64,
    key_id: i64,
    model: String,
    status: i32,
    minute: i64,
}

#[derive(Debug, Default)]
struct Entry {
    /// The row of this minute, once written.
    row_id: Option<i64>,
    /// Refusals not yet added to the row.
    unflushed: i64,
}

/// One refused call to record.
pub struct Refusal {
    pub request_id: String,
    pub user_id: i64,
    pub key_id: i64,
    pub model: String,
    pub status: u16,
    pub latency_ms: i64,
}

#[derive(Debug, Default)]
pub struct Refusals {
    entries: Arc<Mutex<HashMap<Kind, Entry>>>,
    flusher: std::sync::OnceLock<()>,
}

impl Refusals {
    /// Records a refusal; never waits for the database.
    pub fn record(&self, db: &Db, tasks: &TaskTracker, shutdown: &CancellationToken, refusal: Refusal) {
        self.flusher.get_or_init(|| {
            let (entries, db, stop) = (self.entries.clone(), db.clone(), shutdown.clone());
            tasks.spawn(async move { flush_loop(entries, db, stop).await });
        });
        let kind = Kind {
            user_id: refusal.user_id,
            key_id: refusal.key_id,
            model: refusal.model.chars().take(128).collect(),
            status: i32::from(refusal.status),
            minute: now_ms() / 60_000,
        };
        {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = entries.get_mut(&kind) {
                entry.unflushed += 1;
                return;
            }
            if entries.len() >= MAX_ENTRIES {
                tracing::warn!(user.id = refusal.user_id, "too many kinds of refusal this minute; not logged");
                return;
            }
            entries.insert(kind.clone(), Entry::default());
        }
        // The first of its kind this minute: its row, written now, off the request path.
        let (entries, db) = (self.entries.clone(), db.clone());
        tasks.spawn(async move {
            let log = UsageLog {
                model: kind.model.clone(),
                status_code: kind.status,
                latency_ms: refusal.latency_ms,
                ttfb_ms: None,
                stream: false,
                usage_source: "none",
            };
            let row = usage_row(
                &refusal.request_id,
                kind.user_id,
                Some(kind.key_id),
                &log,
                &super::settle::Usage::default(),
                Charge::default(),
            );
            match usage_logs::Entity::insert(row).exec(&db.write).await {
                Ok(done) => {
                    let mut entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(entry) = entries.get_mut(&kind) {
                        entry.row_id = Some(done.last_insert_id);
                    }
                }
                Err(err) => {
                    // The entry stays (without a row) until its minute is over, so an outage
                    // does not turn every later refusal into another insert.
                    tracing::warn!(error = %err, "could not write the usage log of a refused request");
                }
            }
        });
    }
}

async fn flush_loop(entries: Arc<Mutex<HashMap<Kind, Entry>>>, db: Db, shutdown: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => false,
            () = shutdown.cancelled() => true,
        };
        if stopping {
            // Let refusals answered during the last moments reach the map.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        flush(&entries, &db).await;
        if stopping {
            return;
        }
    }
}

/// Adds the counted repeats to their rows and forgets the minutes that are over.
async fn flush(entries: &Mutex<HashMap<Kind, Entry>>, db: &Db) {
    let minute = now_ms() / 60_000;
    let due: Vec<(i64, i64)> = {
        let mut entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
        let due = entries
            .values_mut()
            .filter_map(|e| match e.row_id {
                Some(id) if e.unflushed > 0 => Some((id, std::mem::take(&mut e.unflushed))),
                _ => None,
            })
            .collect();
        entries.retain(|k, e| k.minute >= minute || (e.unflushed > 0 && e.row_id.is_some()));
        due
    };
    for (id, n) in due {
        let res = usage_logs::Entity::update_many()
            .col_expr(usage_logs::Column::RequestCount, Expr::col(usage_logs::Column::RequestCount).add(n))
            .filter(usage_logs::Column::Id.eq(id))
            .exec(&db.write)
            .await;
        if let Err(err) = res {
            tracing::warn!(error = %err, refusals = n, "could not count repeated refusals");
        }
    }
}
