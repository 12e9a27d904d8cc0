//! The JSON shapes of what the back office reads, shared by the admin API and the command
//! line's `--json`: camelCase keys, amounts as decimal strings, times in RFC 3339.

use serde_json::{Value, json};

use super::audit_log::AuditRow;
use super::keys::KeyRow;
use super::users::UserSummary;
use crate::clock::rfc3339;
use crate::db::entities::api_keys;
use crate::money::format_amount;

pub fn summary_json(s: &UserSummary) -> Value {
    json!({
        "id": s.user.id,
        "email": s.user.email,
        "name": s.user.name,
        "role": s.user.role,
        "disabled": s.user.disabled,
        "balance": format_amount(s.balance),
        "subscriptionTokens": s.subscription_tokens,
        "keys": s.keys,
        "spendLast30Days": format_amount(s.spend_recent),
        "lastActiveAt": s.last_active.map(rfc3339),
        "createdAt": rfc3339(s.user.created_at),
    })
}

pub fn key_json(k: &api_keys::Model) -> Value {
    json!({
        "id": k.id,
        "userId": k.user_id,
        "name": k.name,
        "prefix": k.prefix,
        "last4": k.last4,
        "disabled": k.disabled,
        "revokedAt": k.revoked_at.map(rfc3339),
        "lastUsedAt": k.last_used_at.map(rfc3339),
        "createdAt": rfc3339(k.created_at),
        "settings": crate::keys::settings_json(k),
    })
}

/// A key with its owner's email.
pub fn key_row_json(row: &KeyRow) -> Value {
    let mut v = key_json(&row.key);
    v["email"] = Value::String(row.email.clone());
    v
}

/// A stored before/after state: the JSON it was written as.
fn parsed(raw: Option<&str>) -> Value {
    raw.map_or(Value::Null, |s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned())))
}

/// An audit entry with its actor.
pub fn audit_json(row: &AuditRow) -> Value {
    let e = &row.entry;
    json!({
        "id": e.id,
        "actorUserId": e.actor_user_id,
        "actorEmail": row.actor_email,
        "action": e.action,
        "targetType": e.target_type,
        "targetId": e.target_id,
        "before": parsed(e.before.as_deref()),
        "after": parsed(e.after.as_deref()),
        "ip": e.ip,
        "createdAt": rfc3339(e.created_at),
    })
}
