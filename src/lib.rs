//! Tollgate: an AI API relay station. Keys, prepaid balances and subscriptions, exact billing,
//! and an OpenAI-compatible proxy, in one binary.

pub mod accounts;
pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod cache;
pub mod channels;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod gateway;
pub mod http;
pub mod i18n;
pub mod jobs;
pub mod keys;
pub mod models;
pub mod money;
pub mod observability;
pub mod redeem;
pub mod server;
pub mod state;
pub mod subscriptions;
pub mod telemetry;
pub mod translate;
pub mod usage;
