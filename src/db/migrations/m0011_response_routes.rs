//! Which channel created each OpenAI Responses object, and for whom: reading a response and
//! continuing from it (`previous_response_id`) must reach the channel that holds it, and only
//! its owner may do either.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ResponseRoutes::Table)
                .if_not_exists()
                .col(string_len(ResponseRoutes::ResponseId, 191).primary_key())
                .col(big_integer(ResponseRoutes::UserId))
                .col(big_integer(ResponseRoutes::ChannelId))
                .col(big_integer(ResponseRoutes::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_response_routes_created")
                .table(ResponseRoutes::Table)
                .col(ResponseRoutes::CreatedAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum ResponseRoutes {
    Table,
    ResponseId,
    UserId,
    ChannelId,
    CreatedAt,
}
