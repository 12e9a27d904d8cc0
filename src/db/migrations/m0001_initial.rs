//! Every table of the first release, with its keys, constraints and query indexes.
//!
//! Portable rules (DESIGN §3): money and timestamps are BIGINT (micro-units, unix ms), indexed
//! strings are VARCHAR, and non-negative amounts carry a CHECK.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .if_not_exists()
                .col(big_pk_auto(Users::Id))
                .col(string_len_uniq(Users::Email, 255))
                .col(string_len_null(Users::Name, 255))
                .col(string_len(Users::Role, 16).default("user"))
                .col(boolean(Users::Disabled).default(false))
                .col(string_len_null(Users::PasswordHash, 255))
                .col(big_integer(Users::CreatedAt))
                .col(big_integer(Users::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Accounts::Table)
                .if_not_exists()
                .col(big_pk_auto(Accounts::Id))
                .col(big_integer(Accounts::UserId))
                .col(string_len(Accounts::Provider, 32))
                .col(string_len(Accounts::ProviderAccountId, 191))
                .col(big_integer(Accounts::CreatedAt))
                .foreign_key(&mut user_fk(Accounts::Table, Accounts::UserId))
                .to_owned(),
        )
        .await?;
        unique(m, Accounts::Table, "ux_accounts_provider_account", [Accounts::Provider, Accounts::ProviderAccountId])
            .await?;
        index(m, Accounts::Table, "ix_accounts_user", [Accounts::UserId]).await?;

        m.create_table(
            Table::create()
                .table(Sessions::Table)
                .if_not_exists()
                .col(string_len(Sessions::Id, 64).primary_key())
                .col(big_integer_null(Sessions::UserId))
                .col(text(Sessions::Data))
                .col(big_integer(Sessions::ExpiresAt))
                .col(big_integer(Sessions::CreatedAt))
                .foreign_key(&mut user_fk(Sessions::Table, Sessions::UserId))
                .to_owned(),
        )
        .await?;
        index(m, Sessions::Table, "ix_sessions_expires", [Sessions::ExpiresAt]).await?;
        index(m, Sessions::Table, "ix_sessions_user", [Sessions::UserId]).await?;

        m.create_table(
            Table::create()
                .table(ApiKeys::Table)
                .if_not_exists()
                .col(big_pk_auto(ApiKeys::Id))
                .col(big_integer(ApiKeys::UserId))
                .col(string_len(ApiKeys::Name, 64))
                .col(string_len_uniq(ApiKeys::KeyHash, 64))
                .col(string_len(ApiKeys::Prefix, 16))
                .col(string_len(ApiKeys::Last4, 4))
                .col(boolean(ApiKeys::Disabled).default(false))
                .col(big_integer_null(ApiKeys::RevokedAt))
                .col(big_integer_null(ApiKeys::LastUsedAt))
                .col(big_integer(ApiKeys::CreatedAt))
                .col(big_integer(ApiKeys::UpdatedAt))
                .foreign_key(&mut user_fk(ApiKeys::Table, ApiKeys::UserId))
                .to_owned(),
        )
        .await?;
        index(m, ApiKeys::Table, "ix_api_keys_user", [ApiKeys::UserId, ApiKeys::RevokedAt]).await?;

        m.create_table(
            Table::create()
                .table(Balances::Table)
                .if_not_exists()
                .col(big_integer(Balances::UserId).primary_key())
                .col(big_integer(Balances::Amount).default(0).check(Expr::col(Balances::Amount).gte(0)))
                .col(big_integer(Balances::UpdatedAt))
                .foreign_key(&mut user_fk(Balances::Table, Balances::UserId))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Subscriptions::Table)
                .if_not_exists()
                .col(big_pk_auto(Subscriptions::Id))
                .col(big_integer(Subscriptions::UserId))
                .col(string_len(Subscriptions::Name, 64))
                .col(big_integer(Subscriptions::TokensTotal).check(Expr::col(Subscriptions::TokensTotal).gte(0)))
                .col(
                    big_integer(Subscriptions::TokensRemaining).check(Expr::col(Subscriptions::TokensRemaining).gte(0)),
                )
                .col(big_integer(Subscriptions::StartsAt))
                .col(big_integer(Subscriptions::ExpiresAt))
                .col(big_integer(Subscriptions::CreatedAt))
                .col(big_integer(Subscriptions::UpdatedAt))
                .foreign_key(&mut user_fk(Subscriptions::Table, Subscriptions::UserId))
                .to_owned(),
        )
        .await?;
        index(
            m,
            Subscriptions::Table,
            "ix_subscriptions_user_expiry",
            [Subscriptions::UserId, Subscriptions::ExpiresAt],
        )
        .await?;
        index(m, Subscriptions::Table, "ix_subscriptions_expiry", [Subscriptions::ExpiresAt]).await?;

        m.create_table(
            Table::create()
                .table(Models::Table)
                .if_not_exists()
                .col(big_pk_auto(Models::Id))
                .col(string_len_uniq(Models::Name, 128))
                .col(string_len(Models::UpstreamModel, 128))
                .col(big_integer(Models::InputPrice).check(Expr::col(Models::InputPrice).gte(0)))
                .col(big_integer(Models::OutputPrice).check(Expr::col(Models::OutputPrice).gte(0)))
                .col(big_integer(Models::MaxOutputTokens))
                .col(big_integer(Models::ContextWindow))
                .col(boolean(Models::Enabled).default(true))
                .col(big_integer(Models::CreatedAt))
                .col(big_integer(Models::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Reservations::Table)
                .if_not_exists()
                .col(big_pk_auto(Reservations::Id))
                .col(string_len_uniq(Reservations::RequestId, 64))
                .col(big_integer(Reservations::UserId))
                .col(big_integer_null(Reservations::KeyId))
                .col(big_integer_null(Reservations::ModelId))
                .col(string_len(Reservations::State, 16))
                .col(big_integer(Reservations::Amount).check(Expr::col(Reservations::Amount).gte(0)))
                .col(big_integer(Reservations::Tokens).check(Expr::col(Reservations::Tokens).gte(0)))
                .col(text(Reservations::TokenSources))
                .col(big_integer(Reservations::ChargedAmount).default(0))
                .col(big_integer(Reservations::ChargedTokens).default(0))
                .col(big_integer(Reservations::CreatedAt))
                .col(big_integer(Reservations::UpdatedAt))
                .col(big_integer_null(Reservations::ResolvedAt))
                .foreign_key(&mut user_fk(Reservations::Table, Reservations::UserId))
                .to_owned(),
        )
        .await?;
        index(m, Reservations::Table, "ix_reservations_state_age", [Reservations::State, Reservations::CreatedAt])
            .await?;
        index(m, Reservations::Table, "ix_reservations_user_state", [Reservations::UserId, Reservations::State])
            .await?;

        m.create_table(
            Table::create()
                .table(CreditTransactions::Table)
                .if_not_exists()
                .col(big_pk_auto(CreditTransactions::Id))
                .col(big_integer(CreditTransactions::UserId))
                .col(string_len(CreditTransactions::Kind, 32))
                .col(big_integer(CreditTransactions::Amount))
                .col(big_integer(CreditTransactions::Tokens).default(0))
                .col(big_integer_null(CreditTransactions::SubscriptionId))
                .col(string_len(CreditTransactions::Reason, 255))
                .col(big_integer_null(CreditTransactions::ActorUserId))
                .col(big_integer(CreditTransactions::CreatedAt))
                .foreign_key(&mut user_fk(CreditTransactions::Table, CreditTransactions::UserId))
                .to_owned(),
        )
        .await?;
        index(
            m,
            CreditTransactions::Table,
            "ix_credit_tx_user_time",
            [CreditTransactions::UserId, CreditTransactions::CreatedAt],
        )
        .await?;
        index(m, CreditTransactions::Table, "ix_credit_tx_time", [CreditTransactions::CreatedAt]).await?;

        m.create_table(
            Table::create()
                .table(UsageLogs::Table)
                .if_not_exists()
                .col(big_pk_auto(UsageLogs::Id))
                .col(string_len(UsageLogs::RequestId, 64))
                .col(big_integer(UsageLogs::UserId))
                .col(big_integer_null(UsageLogs::KeyId))
                .col(string_len(UsageLogs::Model, 128))
                .col(big_integer(UsageLogs::PromptTokens))
                .col(big_integer(UsageLogs::CompletionTokens))
                .col(big_integer(UsageLogs::TotalTokens))
                .col(big_integer(UsageLogs::Cost).check(Expr::col(UsageLogs::Cost).gte(0)))
                .col(big_integer(UsageLogs::SubscriptionTokens).default(0))
                .col(integer(UsageLogs::StatusCode))
                .col(big_integer(UsageLogs::LatencyMs))
                .col(big_integer_null(UsageLogs::TtfbMs))
                .col(boolean(UsageLogs::Stream))
                .col(string_len(UsageLogs::UsageSource, 16))
                .col(big_integer(UsageLogs::CreatedAt))
                .col(string_len(UsageLogs::Day, 10))
                .foreign_key(&mut user_fk(UsageLogs::Table, UsageLogs::UserId))
                .to_owned(),
        )
        .await?;
        index(m, UsageLogs::Table, "ix_usage_user_time", [UsageLogs::UserId, UsageLogs::CreatedAt]).await?;
        index(m, UsageLogs::Table, "ix_usage_user_day", [UsageLogs::UserId, UsageLogs::Day]).await?;
        index(
            m,
            UsageLogs::Table,
            "ix_usage_user_model_time",
            [UsageLogs::UserId, UsageLogs::Model, UsageLogs::CreatedAt],
        )
        .await?;
        index(m, UsageLogs::Table, "ix_usage_model_day", [UsageLogs::Model, UsageLogs::Day]).await?;
        index(m, UsageLogs::Table, "ix_usage_day", [UsageLogs::Day]).await?;
        index(m, UsageLogs::Table, "ix_usage_request", [UsageLogs::RequestId]).await?;

        m.create_table(
            Table::create()
                .table(AuditLogs::Table)
                .if_not_exists()
                .col(big_pk_auto(AuditLogs::Id))
                .col(big_integer_null(AuditLogs::ActorUserId))
                .col(string_len(AuditLogs::Action, 64))
                .col(string_len(AuditLogs::TargetType, 32))
                .col(string_len(AuditLogs::TargetId, 64))
                .col(text_null(AuditLogs::Before))
                .col(text_null(AuditLogs::After))
                .col(big_integer(AuditLogs::CreatedAt))
                .to_owned(),
        )
        .await?;
        index(m, AuditLogs::Table, "ix_audit_time", [AuditLogs::CreatedAt]).await?;
        index(m, AuditLogs::Table, "ix_audit_target", [AuditLogs::TargetType, AuditLogs::TargetId]).await?;
        Ok(())
    }
}

fn user_fk<T: IntoIden + 'static, C: IntoIden + 'static>(table: T, col: C) -> ForeignKeyCreateStatement {
    ForeignKey::create().from(table, col).to(Users::Table, Users::Id).on_delete(ForeignKeyAction::Cascade).to_owned()
}

async fn index<T, C, const N: usize>(m: &SchemaManager<'_>, table: T, name: &str, cols: [C; N]) -> Result<(), DbErr>
where
    T: IntoIden + 'static,
    C: IntoIden + 'static,
{
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(col);
    }
    m.create_index(stmt.to_owned()).await
}

async fn unique<T, C, const N: usize>(m: &SchemaManager<'_>, table: T, name: &str, cols: [C; N]) -> Result<(), DbErr>
where
    T: IntoIden + 'static,
    C: IntoIden + 'static,
{
    let mut stmt = Index::create();
    stmt.name(name).table(table).unique();
    for col in cols {
        stmt.col(col);
    }
    m.create_index(stmt.to_owned()).await
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    Name,
    Role,
    Disabled,
    PasswordHash,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    UserId,
    Provider,
    ProviderAccountId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    Data,
    ExpiresAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    UserId,
    Name,
    KeyHash,
    Prefix,
    Last4,
    Disabled,
    RevokedAt,
    LastUsedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Balances {
    Table,
    UserId,
    Amount,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
    UserId,
    Name,
    TokensTotal,
    TokensRemaining,
    StartsAt,
    ExpiresAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Models {
    Table,
    Id,
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

#[derive(DeriveIden)]
enum Reservations {
    Table,
    Id,
    RequestId,
    UserId,
    KeyId,
    ModelId,
    State,
    Amount,
    Tokens,
    TokenSources,
    ChargedAmount,
    ChargedTokens,
    CreatedAt,
    UpdatedAt,
    ResolvedAt,
}

#[derive(DeriveIden)]
enum CreditTransactions {
    Table,
    Id,
    UserId,
    Kind,
    Amount,
    Tokens,
    SubscriptionId,
    Reason,
    ActorUserId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UsageLogs {
    Table,
    Id,
    RequestId,
    UserId,
    KeyId,
    Model,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    Cost,
    SubscriptionTokens,
    StatusCode,
    LatencyMs,
    TtfbMs,
    Stream,
    UsageSource,
    CreatedAt,
    Day,
}

#[derive(DeriveIden)]
enum AuditLogs {
    Table,
    Id,
    ActorUserId,
    Action,
    TargetType,
    TargetId,
    Before,
    After,
    CreatedAt,
}
