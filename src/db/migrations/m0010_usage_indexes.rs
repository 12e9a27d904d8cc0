//! Drops the index of `usage_logs` that no query uses: every usage row paid for it on insert.
//! The query plans of the dashboard and back-office queries are in
//! `bench/results/query-plans.md`; each remaining index serves at least one of them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Nothing looks usage rows up by request id (settlement finds the reservation instead).
        if m.has_index("usage_logs", "ix_usage_request").await? {
            m.drop_index(Index::drop().name("ix_usage_request").table(UsageLogs::Table).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("ix_usage_request")
                .table(UsageLogs::Table)
                .col(UsageLogs::RequestId)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    RequestId,
}
