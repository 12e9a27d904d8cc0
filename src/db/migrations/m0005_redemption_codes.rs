//! Redemption codes: batches created by an operator, and their codes, stored as SHA-256 hashes
//! and used at most once.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(RedemptionBatches::Table)
                .if_not_exists()
                .col(big_pk_auto(RedemptionBatches::Id))
                .col(string_len(RedemptionBatches::Kind, 16))
                .col(big_integer(RedemptionBatches::Amount))
                .col(big_integer(RedemptionBatches::Tokens))
                .col(big_integer(RedemptionBatches::Days))
                .col(big_integer(RedemptionBatches::CodeCount))
                .col(big_integer_null(RedemptionBatches::ExpiresAt))
                .col(string_len(RedemptionBatches::Note, 255))
                .col(big_integer_null(RedemptionBatches::CreatedBy))
                .col(big_integer(RedemptionBatches::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(RedemptionCodes::Table)
                .if_not_exists()
                .col(big_pk_auto(RedemptionCodes::Id))
                .col(big_integer(RedemptionCodes::BatchId))
                .col(string_len(RedemptionCodes::CodeHash, 64))
                .col(string_len(RedemptionCodes::Prefix, 16))
                .col(string_len(RedemptionCodes::Kind, 16))
                .col(big_integer(RedemptionCodes::Amount))
                .col(big_integer(RedemptionCodes::Tokens))
                .col(big_integer(RedemptionCodes::Days))
                .col(big_integer_null(RedemptionCodes::ExpiresAt))
                .col(big_integer_null(RedemptionCodes::CreatedBy))
                .col(big_integer(RedemptionCodes::CreatedAt))
                .col(big_integer_null(RedemptionCodes::RedeemedBy))
                .col(big_integer_null(RedemptionCodes::RedeemedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_redemption_codes_batch")
                        .from(RedemptionCodes::Table, RedemptionCodes::BatchId)
                        .to(RedemptionBatches::Table, RedemptionBatches::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_redemption_codes_hash")
                .table(RedemptionCodes::Table)
                .col(RedemptionCodes::CodeHash)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_redemption_codes_batch")
                .table(RedemptionCodes::Table)
                .col(RedemptionCodes::BatchId)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum RedemptionBatches {
    Table,
    Id,
    Kind,
    Amount,
    Tokens,
    Days,
    CodeCount,
    ExpiresAt,
    Note,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RedemptionCodes {
    Table,
    Id,
    BatchId,
    CodeHash,
    Prefix,
    Kind,
    Amount,
    Tokens,
    Days,
    ExpiresAt,
    CreatedBy,
    CreatedAt,
    RedeemedBy,
    RedeemedAt,
}
