//! The one migration set, run on SQLite, MySQL/MariaDB and PostgreSQL alike.

use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_starter_models;
mod m0003_edges;
mod m0004_back_office;
mod m0005_redemption_codes;
mod m0006_channels;
mod m0007_key_controls;
mod m0008_usage_daily;
mod m0009_token_classes;
mod m0010_usage_indexes;
mod m0011_response_routes;
mod m0012_revenue_rollups;
mod m0013_pending_reservations;
mod m0014_usage_time_index;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_starter_models::Migration),
            Box::new(m0003_edges::Migration),
            Box::new(m0004_back_office::Migration),
            Box::new(m0005_redemption_codes::Migration),
            Box::new(m0006_channels::Migration),
            Box::new(m0007_key_controls::Migration),
            Box::new(m0008_usage_daily::Migration),
            Box::new(m0009_token_classes::Migration),
            Box::new(m0010_usage_indexes::Migration),
            Box::new(m0011_response_routes::Migration),
            Box::new(m0012_revenue_rollups::Migration),
            Box::new(m0013_pending_reservations::Migration),
            Box::new(m0014_usage_time_index::Migration),
        ]
    }
}
