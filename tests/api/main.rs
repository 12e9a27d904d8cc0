//! One integration-test binary: the real app on port 0 against fresh databases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod billing;
mod cli;
mod compat;
mod concurrency;
mod cron;
mod faults;
mod gateway;
mod health;
mod keys;
mod process;
mod properties;
mod storage_story;
mod streaming;
mod subscriptions;
