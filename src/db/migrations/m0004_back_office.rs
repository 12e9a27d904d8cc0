//! The back office: the address an audited change was asked from, indexes for the audit-log
//! filters, and stored answers of admin writes sent with an `Idempotency-Key`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(Table::alter().table(AuditLogs::Table).add_column(string_len_null(AuditLogs::Ip, 45)).to_owned())
            .await?;
        for (name, col) in [("ix_audit_actor", AuditLogs::ActorUserId), ("ix_audit_action", AuditLogs::Action)] {
            m.create_index(Index::create().name(name).table(AuditLogs::Table).col(col).to_owned()).await?;
        }
        m.create_table(
            Table::create()
                .table(IdempotencyKeys::Table)
                .if_not_exists()
                .col(big_pk_auto(IdempotencyKeys::Id))
                .col(big_integer(IdempotencyKeys::ActorUserId))
                .col(string_len(IdempotencyKeys::IdemKey, 128))
                .col(string_len(IdempotencyKeys::RequestHash, 64))
                .col(integer(IdempotencyKeys::StatusCode))
                .col(text(IdempotencyKeys::Response))
                .col(big_integer(IdempotencyKeys::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_idempotency_actor_key")
                .table(IdempotencyKeys::Table)
                .col(IdempotencyKeys::ActorUserId)
                .col(IdempotencyKeys::IdemKey)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_idempotency_created")
                .table(IdempotencyKeys::Table)
                .col(IdempotencyKeys::CreatedAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum AuditLogs {
    Table,
    ActorUserId,
    Action,
    Ip,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Id,
    ActorUserId,
    IdemKey,
    RequestHash,
    StatusCode,
    Response,
    CreatedAt,
}
