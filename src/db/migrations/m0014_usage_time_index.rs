//! One index of `usage_logs` by time in place of three by day.
//!
//! `day` is the UTC day of `created_at`, so every query over whole days of usage rows can ask
//! for the same rows by `created_at`. Three indexes served those queries by day: `(user_id,
//! day)`, `(model, day)` and `(day)`. Every usage row paid for each on insert, and `(user_id,
//! day)` the most: its rows land at each customer's own place in the index, a page per customer
//! of a commit. Now a customer's days are read through `(user_id, created_at)`, which the usage
//! page needs anyway, and everyone's through one new index on `created_at`, which grows at its
//! right edge as the table does.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("ix_usage_time")
                .table(UsageLogs::Table)
                .col(UsageLogs::CreatedAt)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        for name in ["ix_usage_user_day", "ix_usage_model_day", "ix_usage_day"] {
            if m.has_index("usage_logs", name).await? {
                m.drop_index(Index::drop().name(name).table(UsageLogs::Table).to_owned()).await?;
            }
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    CreatedAt,
}
