//! Channels: the upstream accounts requests are routed to, their upstream keys (encrypted at
//! rest), and on every usage row the channel that served it and the attempts it took.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Channels::Table)
                .if_not_exists()
                .col(big_pk_auto(Channels::Id))
                .col(string_len(Channels::Name, 64))
                .col(string_len(Channels::Provider, 16))
                .col(string_len(Channels::BaseUrl, 512))
                .col(text(Channels::Models))
                .col(integer(Channels::Priority))
                .col(integer(Channels::Weight))
                .col(boolean(Channels::Enabled))
                .col(text_null(Channels::Headers))
                .col(string_len(Channels::HeaderNames, 1024).default(""))
                .col(big_integer_null(Channels::ConnectTimeoutMs))
                .col(big_integer_null(Channels::FirstByteTimeoutMs))
                .col(big_integer_null(Channels::IdleTimeoutMs))
                .col(big_integer_null(Channels::TotalTimeoutMs))
                .col(big_integer_null(Channels::InputCost))
                .col(big_integer_null(Channels::OutputCost))
                .col(string_len_null(Channels::DisabledReason, 255))
                .col(big_integer(Channels::CreatedAt))
                .col(big_integer(Channels::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create().name("ux_channels_name").table(Channels::Table).col(Channels::Name).unique().to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ChannelKeys::Table)
                .if_not_exists()
                .col(big_pk_auto(ChannelKeys::Id))
                .col(big_integer(ChannelKeys::ChannelId))
                .col(text(ChannelKeys::Ciphertext))
                .col(string_len(ChannelKeys::Hint, 16))
                .col(boolean(ChannelKeys::Enabled))
                .col(string_len_null(ChannelKeys::DisabledReason, 255))
                .col(big_integer_null(ChannelKeys::DisabledAt))
                .col(big_integer(ChannelKeys::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_channel_keys_channel")
                        .from(ChannelKeys::Table, ChannelKeys::ChannelId)
                        .to(Channels::Table, Channels::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_channel_keys_channel")
                .table(ChannelKeys::Table)
                .col(ChannelKeys::ChannelId)
                .to_owned(),
        )
        .await?;
        // One column per statement: SQLite's ALTER TABLE takes one change at a time.
        let add =
            |table: DynIden, col: &mut ColumnDef| Table::alter().table(table).add_column(col.to_owned()).to_owned();
        m.alter_table(add(UsageLogs::Table.into_iden(), &mut big_integer_null(UsageLogs::ChannelId))).await?;
        m.alter_table(add(UsageLogs::Table.into_iden(), integer(UsageLogs::Attempts).default(0))).await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Channels {
    Table,
    Id,
    Name,
    Provider,
    BaseUrl,
    Models,
    Priority,
    Weight,
    Enabled,
    Headers,
    HeaderNames,
    ConnectTimeoutMs,
    FirstByteTimeoutMs,
    IdleTimeoutMs,
    TotalTimeoutMs,
    InputCost,
    OutputCost,
    DisabledReason,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ChannelKeys {
    Table,
    Id,
    ChannelId,
    Ciphertext,
    Hint,
    Enabled,
    DisabledReason,
    DisabledAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    ChannelId,
    Attempts,
}
