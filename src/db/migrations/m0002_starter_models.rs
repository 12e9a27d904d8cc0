//! The starter catalogue: well-known OpenAI models at their public list prices (USD per 1M
//! tokens), loaded once on the first migration. Operators change or disable them freely.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (name, input price, output price, max output tokens, context window); prices in micro-units
/// per 1M tokens.
const STARTER: &[(&str, i64, i64, i64, i64)] = &[
    ("gpt-4o", 2_500_000, 10_000_000, 16_384, 128_000),
    ("gpt-4o-mini", 150_000, 600_000, 16_384, 128_000),
    ("gpt-4.1", 2_000_000, 8_000_000, 32_768, 1_047_576),
    ("gpt-4.1-mini", 400_000, 1_600_000, 32_768, 1_047_576),
    ("gpt-4.1-nano", 100_000, 400_000, 32_768, 1_047_576),
    ("o3-mini", 1_100_000, 4_400_000, 100_000, 200_000),
    ("o4-mini", 1_100_000, 4_400_000, 100_000, 200_000),
    ("gpt-3.5-turbo", 500_000, 1_500_000, 4_096, 16_385),
];

#[derive(DeriveIden)]
enum Models {
    Table,
    Name,
    UpstreamModel,
    InputPrice,
    OutputPrice,
    MaxOutputTokens,
    ContextWindow,
    Enabled,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let now = crate::clock::now_ms();
        let mut insert = Query::insert();
        insert.into_table(Models::Table).columns([
            Models::Name,
            Models::UpstreamModel,
            Models::InputPrice,
            Models::OutputPrice,
            Models::MaxOutputTokens,
            Models::ContextWindow,
            Models::Enabled,
            Models::CreatedAt,
            Models::UpdatedAt,
        ]);
        for &(name, input, output, max_out, context) in STARTER {
            insert.values_panic([
                name.into(),
                name.into(),
                input.into(),
                output.into(),
                max_out.into(),
                context.into(),
                true.into(),
                now.into(),
                now.into(),
            ]);
        }
        m.exec_stmt(insert.to_owned()).await
    }
}
