//! Per-key controls and per-user limits: a key's allowed models, spend cap and its period,
//! expiry, address allowlist and rate limits; a user's rate and concurrency limits; what each
//! capped key spent per period; and, on a reservation, the period its key cap was charged to.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let key_columns = [
            text_null(ApiKeys::AllowedModels),
            big_integer_null(ApiKeys::SpendLimit),
            string_len_null(ApiKeys::SpendLimitPeriod, 8),
            big_integer_null(ApiKeys::ExpiresAt),
            text_null(ApiKeys::AllowedIps),
            big_integer_null(ApiKeys::Rpm),
            big_integer_null(ApiKeys::Tpm),
        ];
        for mut col in key_columns {
            m.alter_table(Table::alter().table(ApiKeys::Table).add_column(&mut col).to_owned()).await?;
        }
        let user_columns =
            [big_integer_null(Users::Rpm), big_integer_null(Users::Tpm), big_integer_null(Users::MaxConcurrent)];
        for mut col in user_columns {
            m.alter_table(Table::alter().table(Users::Table).add_column(&mut col).to_owned()).await?;
        }
        m.alter_table(
            Table::alter()
                .table(Reservations::Table)
                .add_column(string_len_null(Reservations::KeyPeriod, 16))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(KeySpend::Table)
                .if_not_exists()
                .col(big_integer(KeySpend::KeyId))
                .col(string_len(KeySpend::Period, 16))
                .col(big_integer(KeySpend::Spent))
                .col(big_integer(KeySpend::UpdatedAt))
                .primary_key(Index::create().col(KeySpend::KeyId).col(KeySpend::Period))
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    AllowedModels,
    SpendLimit,
    SpendLimitPeriod,
    ExpiresAt,
    AllowedIps,
    Rpm,
    Tpm,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Rpm,
    Tpm,
    MaxConcurrent,
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    KeyPeriod,
}

#[derive(DeriveIden)]
enum KeySpend {
    Table,
    KeyId,
    Period,
    Spent,
    UpdatedAt,
}
