//! OpenAI's old billing endpoints, which chat apps (NextChat, LobeChat, Cherry Studio …) call
//! with an API key to show a balance.
//!
//! The billing answers keep OpenAI's field names (`*_usd`, `total_usage` in cents) but are in
//! the configured currency; their numbers are floats because that is the wire format these
//! apps read. Money is converted through its exact decimal text, so each float is the one
//! nearest to the amount.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::json;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::{Authenticated, Route};
use crate::clock::{MS_PER_DAY, now_ms};
use crate::error::Error;
use crate::money::format_amount;
use crate::state::AppState;
use crate::{billing, usage};

/// `access_until` when access does not end: 2100-01-01T00:00:00Z (a balance does not expire).
const ACCESS_UNTIL_FOREVER: i64 = 4_102_444_800;
/// The longest range `billing/usage` sums, as OpenAI's endpoint allowed.
const MAX_USAGE_DAYS: i64 = 100;

/// Micro-units as a float in currency units.
fn units(micros: i64) -> f64 {
    format_amount(micros).parse().unwrap_or(0.0)
}

/// Micro-units as a float in cents (1 cent = 10,000 micro-units).
fn cents(micros: i64) -> f64 {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:04}", abs / 10_000, abs % 10_000).parse().unwrap_or(0.0)
}

/// Unix ms of the first instant of the UTC month of `ms`.
fn month_start_ms(ms: i64) -> i64 {
    let date = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap_or(OffsetDateTime::UNIX_EPOCH).date();
    let first = date.replace_day(1).unwrap_or(date);
    first.midnight().assume_utc().unix_timestamp() * 1000
}

/// `GET /v1/dashboard/billing/subscription`: the limit is the balance plus what was spent this
/// UTC month, so that limit − usage (what chat apps show as "remaining") is the balance.
pub async fn subscription(State(state): State<AppState>, auth: Authenticated<Subscription>) -> Response {
    let (db, user_id) = (&state.db, auth.key.user_id);
    let result = async {
        let now = now_ms();
        let balance = billing::balance::amount(&db.read, user_id).await?;
        let spent = usage::spent(db, user_id, month_start_ms(now), None).await?;
        let limit = units(balance.saturating_add(spent));
        Ok(json!({
            "object": "billing_subscription",
            "has_payment_method": true,
            "soft_limit_usd": limit,
            "hard_limit_usd": limit,
            "system_hard_limit_usd": limit,
            "access_until": ACCESS_UNTIL_FOREVER,
            "plan": { "title": "Pay as you go", "id": "payg" },
        }))
    };
    auth.reply(result.await)
}

pub struct Subscription;
impl Route for Subscription {
    const NAME: &'static str = "billing_subscription";
}

/// The query of `billing/usage`. Other parameters are ignored, as OpenAI did.
#[derive(serde::Deserialize)]
pub struct UsageRange {
    start_date: Option<String>,
    end_date: Option<String>,
}

/// `[start, end)` in unix ms from two `YYYY-MM-DD` dates, at most `MAX_USAGE_DAYS` apart.
fn usage_range(range: &UsageRange) -> Result<(i64, i64), Error> {
    let date = |name: &str, raw: Option<&str>| -> Result<i64, Error> {
        let raw = raw
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::BadRequest(format!("{name} is required, as a date (YYYY-MM-DD)")))?;
        let d = Date::parse(raw, format_description!("[year]-[month]-[day]"))
            .map_err(|_| Error::BadRequest(format!("{name} must be a date (YYYY-MM-DD), not `{raw}`")))?;
        Ok(d.midnight().assume_utc().unix_timestamp() * 1000)
    };
    let start = date("start_date", range.start_date.as_deref())?;
    let end = date("end_date", range.end_date.as_deref())?;
    if end <= start {
        return Err(Error::BadRequest("end_date must be after start_date".into()));
    }
    if end - start > MAX_USAGE_DAYS * MS_PER_DAY {
        return Err(Error::BadRequest(format!("the date range may span at most {MAX_USAGE_DAYS} days")));
    }
    Ok((start, end))
}

/// `GET /v1/dashboard/billing/usage?start_date=&end_date=`: what the key's user was charged
/// from `start_date` (included) to `end_date` (excluded), in cents.
pub async fn billing_usage(
    State(state): State<AppState>,
    auth: Authenticated<Usage>,
    query: Result<Query<UsageRange>, QueryRejection>,
) -> Response {
    let (db, user_id) = (&state.db, auth.key.user_id);
    let result = async {
        let Query(range) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
        let (start, end) = usage_range(&range)?;
        let spent = usage::spent(db, user_id, start, Some(end)).await?;
        Ok(json!({ "object": "list", "total_usage": cents(spent) }))
    };
    auth.reply(result.await)
}

pub struct Usage;
impl Route for Usage {
    const NAME: &'static str = "billing_usage";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_becomes_the_nearest_float() {
        assert_eq!(units(12_345_678), 12.345678);
        assert_eq!(units(100_000), 0.1);
        assert_eq!(units(0), 0.0);
        assert_eq!(cents(1_234_567), 123.4567);
        assert_eq!(cents(10_000), 1.0);
        assert_eq!(cents(1), 0.0001);
        assert_eq!(cents(-20_000), -2.0);
    }

    #[test]
    fn months_start_on_the_first_at_midnight_utc() {
        // 2026-12-02T10:00:00Z → 2026-12-01T00:00:00Z
        assert_eq!(month_start_ms(1_796_205_600_000), 1_796_083_200_000);
        assert_eq!(month_start_ms(1_796_083_200_000), 1_796_083_200_000);
        assert_eq!(month_start_ms(1_796_083_200_000 - 1), 1_793_491_200_000);
    }

    #[test]
    fn usage_ranges_are_dates_at_most_a_hundred_days_apart() {
        let r = |s: Option<&str>, e: Option<&str>| {
            usage_range(&UsageRange { start_date: s.map(str::to_owned), end_date: e.map(str::to_owned) })
        };
        let (start, end) = r(Some("2026-11-30"), Some("2026-12-02")).unwrap();
        assert_eq!(end - start, 2 * MS_PER_DAY);
        assert!(r(Some("2026-01-01"), Some("2026-04-11")).is_ok(), "100 days");
        for (s, e) in [
            (None, Some("2026-12-01")),
            (Some("2026-12-01"), None),
            (Some("2026-12-01"), Some("2026-12-01")),
            (Some("2026-12-02"), Some("2026-12-01")),
            (Some("2026-01-01"), Some("2026-04-12")),
            (Some("yesterday"), Some("2026-12-01")),
            (Some("2026-11-31"), Some("2026-12-01")),
        ] {
            assert!(matches!(r(s, e), Err(Error::BadRequest(_))), "{s:?} {e:?}");
        }
    }
}
