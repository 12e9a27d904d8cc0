//! Token classes: models gain a cache-read price, a cache-write price (both nullable: unset
//! means the documented default, see `billing::pricing`) and a price per request; usage rows
//! record the cache-read, cache-write and reasoning tokens among their prompt and completion
//! tokens.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let model_columns = [
            big_integer_null(Models::CacheReadPrice),
            big_integer_null(Models::CacheWritePrice),
            big_integer(Models::RequestPrice).default(0).to_owned(),
        ];
        for mut col in model_columns {
            m.alter_table(Table::alter().table(Models::Table).add_column(&mut col).to_owned()).await?;
        }
        let usage_columns = [
            big_integer(UsageLogs::CacheReadTokens).default(0).to_owned(),
            big_integer(UsageLogs::CacheWriteTokens).default(0).to_owned(),
            big_integer(UsageLogs::ReasoningTokens).default(0).to_owned(),
        ];
        for mut col in usage_columns {
            m.alter_table(Table::alter().table(UsageLogs::Table).add_column(&mut col).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Models {
    Table,
    CacheReadPrice,
    CacheWritePrice,
    RequestPrice,
}

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    CacheReadTokens,
    CacheWriteTokens,
    ReasoningTokens,
}
