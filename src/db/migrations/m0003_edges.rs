//! Columns and tables for the billing and abuse edges: shortfalls and excess collected at
//! settlement, aggregated refusals, the output-cap field each model's upstream honours, and
//! single-use OAuth states.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE takes one change at a time.
        let add =
            |table: DynIden, col: &mut ColumnDef| Table::alter().table(table).add_column(col.to_owned()).to_owned();
        // Money taken from the balance at settlement beyond what was reserved, and what could
        // not be collected at all (the shortfall). `charged_amount` includes the excess.
        m.alter_table(add(Reservations::Table.into_iden(), big_integer(Reservations::ExcessAmount).default(0))).await?;
        m.alter_table(add(Reservations::Table.into_iden(), big_integer(Reservations::Shortfall).default(0))).await?;
        // What the upstream billed that nobody paid for; non-zero only on a shortfall.
        m.alter_table(add(UsageLogs::Table.into_iden(), big_integer(UsageLogs::Shortfall).default(0))).await?;
        // Repeated refusals of one key within a minute share one row.
        m.alter_table(add(UsageLogs::Table.into_iden(), big_integer(UsageLogs::RequestCount).default(1))).await?;
        // The request field that carries the output cap to this model's upstream.
        m.alter_table(add(
            Models::Table.into_iden(),
            string_len(Models::CapField, 32).default("max_completion_tokens"),
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(OauthStates::Table)
                .if_not_exists()
                .col(string_len(OauthStates::StateHash, 64).primary_key())
                .col(big_integer(OauthStates::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_oauth_states_created")
                .table(OauthStates::Table)
                .col(OauthStates::CreatedAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    ExcessAmount,
    Shortfall,
}

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    Shortfall,
    RequestCount,
}

#[derive(DeriveIden)]
enum Models {
    Table,
    CapField,
}

#[derive(DeriveIden)]
enum OauthStates {
    Table,
    StateHash,
    CreatedAt,
}
