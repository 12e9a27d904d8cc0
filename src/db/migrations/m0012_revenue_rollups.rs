//! The revenue report's own rollups of a day that is over: `usage_daily_models`, one row per
//! day and model with the day's sums, and `usage_daily_payers`, one row per day and customer
//! charged something that day. The report read `usage_daily` (customers × keys × models rows a
//! day), which still grew with the customers; these grow with models and with payers only.
//! Days already rolled up are filled from `usage_daily` here (see `usage::rollup::backfill`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(UsageDailyModels::Table)
                .if_not_exists()
                .col(string_len(UsageDailyModels::Day, 10))
                .col(string_len(UsageDailyModels::Model, 128))
                .col(big_integer(UsageDailyModels::Requests))
                .col(big_integer(UsageDailyModels::TotalTokens))
                .col(big_integer(UsageDailyModels::Cost))
                .primary_key(Index::create().col(UsageDailyModels::Day).col(UsageDailyModels::Model))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(UsageDailyPayers::Table)
                .if_not_exists()
                .col(string_len(UsageDailyPayers::Day, 10))
                .col(big_integer(UsageDailyPayers::UserId))
                .primary_key(Index::create().col(UsageDailyPayers::Day).col(UsageDailyPayers::UserId))
                .to_owned(),
        )
        .await?;
        crate::usage::rollup::backfill_revenue(m.get_connection()).await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum UsageDailyModels {
    Table,
    Day,
    Model,
    Requests,
    TotalTokens,
    Cost,
}

#[derive(DeriveIden)]
enum UsageDailyPayers {
    Table,
    Day,
    UserId,
}
