//! One integration-test binary: the real app on port 0 against fresh databases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod accounts;
mod admin;
mod back_office;
mod billing;
mod browser;
mod cache_write_reservations;
mod channel_admin;
mod channels;
mod chat_apps;
mod cli;
mod compat;
mod concurrency;
mod connections;
mod cron;
mod deploy;
mod edges;
mod fake_oauth;
mod faults;
mod gateway;
mod health;
mod hygiene;
mod key_controls;
mod key_edits;
mod keys;
mod models;
mod multi_instance;
mod observability;
mod process;
mod properties;
mod protocol_clients;
mod protocols;
mod rate_limits;
mod redeem;
mod scripted;
mod storage_story;
mod stream_endings;
mod streaming;
mod subscriptions;
mod token_classes;
mod usage_api;
mod usage_daily;
