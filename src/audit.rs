//! The audit log: who changed what, with the state before and after, written in the same
//! transaction as the change itself.

use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};

use crate::clock::now_ms;
use crate::db::entities::audit_logs;
use crate::error::Result;

/// Who asked for a change: an admin (with the address of their request), or nobody for the
/// command line and scheduled jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    pub user_id: Option<i64>,
    pub ip: Option<String>,
}

impl Actor {
    /// The command line or a job.
    pub fn system() -> Self {
        Self::default()
    }

    /// An admin's request from `ip`.
    pub fn admin(user_id: i64, ip: Option<String>) -> Self {
        Self { user_id: Some(user_id), ip }
    }
}

/// One audited change.
pub struct Entry<'a> {
    /// The admin who made it; `None` for the command line and scheduled jobs.
    pub actor_user_id: Option<i64>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Writes `entry` on `conn` (pass the transaction that makes the change).
pub async fn record(conn: &impl ConnectionTrait, entry: Entry<'_>) -> Result<()> {
    record_from(conn, entry, None).await
}

/// Writes `entry` with the address the change was asked from (an admin request's client).
pub async fn record_from(conn: &impl ConnectionTrait, entry: Entry<'_>, ip: Option<&str>) -> Result<()> {
    row(entry, ip).insert(conn).await?;
    Ok(())
}

/// The row `entry` is written as.
pub fn row(entry: Entry<'_>, ip: Option<&str>) -> audit_logs::ActiveModel {
    audit_logs::ActiveModel {
        actor_user_id: Set(entry.actor_user_id),
        action: Set(entry.action.to_owned()),
        target_type: Set(entry.target_type.to_owned()),
        target_id: Set(entry.target_id),
        before: Set(entry.before.map(|v| v.to_string())),
        after: Set(entry.after.map(|v| v.to_string())),
        created_at: Set(now_ms()),
        ip: Set(ip.map(str::to_owned)),
        ..Default::default()
    }
}
