//! Daily rollups of the usage rows: one row per day, customer, key and model with the day's
//! sums, written by a background job for days that are over (see `usage::rollup`), so the
//! back office's revenue report and the customers' charts read thousands of rows instead of
//! millions. `usage_daily_days` records which days are rolled up.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(UsageDaily::Table)
                .if_not_exists()
                .col(string_len(UsageDaily::Day, 10))
                .col(big_integer(UsageDaily::UserId))
                // 0 for rows without a key (refusals before a key was known).
                .col(big_integer(UsageDaily::KeyId))
                .col(string_len(UsageDaily::Model, 128))
                .col(big_integer(UsageDaily::Requests))
                .col(big_integer(UsageDaily::PromptTokens))
                .col(big_integer(UsageDaily::CompletionTokens))
                .col(big_integer(UsageDaily::TotalTokens))
                .col(big_integer(UsageDaily::Cost))
                .primary_key(
                    Index::create()
                        .col(UsageDaily::Day)
                        .col(UsageDaily::UserId)
                        .col(UsageDaily::KeyId)
                        .col(UsageDaily::Model),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_usage_daily_user_day")
                .table(UsageDaily::Table)
                .col(UsageDaily::UserId)
                .col(UsageDaily::Day)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(UsageDailyDays::Table)
                .if_not_exists()
                .col(string_len(UsageDailyDays::Day, 10).primary_key())
                .col(big_integer(UsageDailyDays::RolledAt))
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum UsageDaily {
    Table,
    Day,
    UserId,
    KeyId,
    Model,
    Requests,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    Cost,
}

#[derive(DeriveIden)]
enum UsageDailyDays {
    Table,
    Day,
    RolledAt,
}
