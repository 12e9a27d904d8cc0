//! SeaORM entities: one file a table, columns exactly as the migration creates them.

pub mod accounts;
pub mod api_keys;
pub mod audit_logs;
pub mod balances;
pub mod channel_keys;
pub mod channels;
pub mod credit_transactions;
pub mod idempotency_keys;
pub mod key_spend;
pub mod models;
pub mod oauth_states;
pub mod redemption_batches;
pub mod redemption_codes;
pub mod reservations;
pub mod sessions;
pub mod subscriptions;
pub mod usage_logs;
pub mod users;
