//! `POST /api/internal/redeem` `{"code"}` (session cookie): a customer redeems a code. Failed
//! attempts are limited per user and per client address (`REDEEM_FAILURE_LIMIT` in 15 minutes,
//! three times as many per address), counted before the code is looked up.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::internal::ApiJson;
use super::session::CurrentUser;
use crate::app::AppState;
use crate::cache;
use crate::clock::rfc3339;
use crate::error::Error;
use crate::money::format_amount;
use crate::redeem::{self, Credited};

/// An address may fail this many times the per-user limit: a few people share one address
/// (an office, a carrier's NAT) without sharing one user's allowance.
const ADDRESS_FACTOR: usize = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemBody {
    code: String,
}

/// 200 with what was credited and the new balance; 400 (not a code), 404 (unknown), 409
/// (already used), 410 (expired), 429 with `Retry-After` (too many failures).
pub async fn redeem(
    State(state): State<AppState>,
    me: CurrentUser,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<RedeemBody>,
) -> Result<Json<Value>, ApiError> {
    let ip = super::client_ip::client_ip(peer.ip(), &headers, &state.config.trusted_proxies);
    let limit = state.config.redeem_failure_limit;
    let attempts = &state.auth.failures.redeem;
    let slot = attempts.take(me.user.id, Some(ip), limit, limit.saturating_mul(ADDRESS_FACTOR)).map_err(|secs| {
        tracing::info!(user.id = me.user.id, "redemption refused: too many failed attempts");
        Error::RateLimited {
            message: "too many failed redemption attempts; try again later".into(),
            retry_after_secs: secs,
        }
    })?;
    let redeemed = match redeem::redeem(&state.db, me.user.id, &body.code, Some(&ip.to_string())).await {
        Ok(r) => r,
        Err(e) => {
            // A failure of ours is not the customer's attempt: it does not count.
            if matches!(e, Error::Database(_) | Error::Internal(_)) {
                attempts.release(slot);
            }
            return Err(ApiError(e));
        }
    };
    attempts.release(slot);
    state.cache.delete(&cache::user_balance(me.user.id)).await;
    tracing::info!(user.id = me.user.id, code.id = redeemed.code_id, batch.id = redeemed.batch_id, "code redeemed");
    let mut answer = json!({ "balance": format_amount(redeemed.balance) });
    match &redeemed.credited {
        Credited::Money { amount } => {
            answer["kind"] = json!(redeem::KIND_MONEY);
            answer["amount"] = json!(format_amount(*amount));
        }
        Credited::Subscription(sub) => {
            answer["kind"] = json!(redeem::KIND_SUBSCRIPTION);
            answer["tokens"] = json!(sub.tokens_total);
            answer["subscription"] = json!({
                "id": sub.id,
                "name": sub.name,
                "tokensRemaining": sub.tokens_remaining,
                "tokensTotal": sub.tokens_total,
                "expiresAt": rfc3339(sub.expires_at),
            });
        }
    }
    Ok(Json(answer))
}
