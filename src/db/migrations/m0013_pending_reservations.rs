//! Reservation indexes that a settlement does not have to move.
//!
//! A settlement changes a reservation's `state`, and every index holding `state` moved its entry
//! on every request: `(state, created_at)` from the pending part to the settled part, `(user_id,
//! state)` within the customer's part. The sweeper only looks for pending reservations, and the
//! per-customer reconciliation reads all of a customer's. So, where the engine has partial
//! indexes (SQLite, PostgreSQL), the sweeper's index holds the pending reservations only — a few
//! pages however long the history — and the customer's index is on `user_id` alone, which a
//! settlement does not touch. MySQL/MariaDB keep `(state, created_at)` (no partial indexes).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // The new customer index first: on MySQL the foreign key on `user_id` needs one at all
        // times.
        m.create_index(
            Index::create()
                .name("ix_reservations_user")
                .table(Reservations::Table)
                .col(Reservations::UserId)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        if m.has_index("reservations", "ix_reservations_user_state").await? {
            m.drop_index(Index::drop().name("ix_reservations_user_state").table(Reservations::Table).to_owned())
                .await?;
        }
        if m.get_database_backend() == DbBackend::MySql {
            return Ok(());
        }
        // The sweeper's query names the state as this literal, so the planner can use it.
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS ix_reservations_pending ON reservations (created_at) \
                 WHERE state = 'pending'",
            )
            .await?;
        if m.has_index("reservations", "ix_reservations_state_age").await? {
            m.drop_index(Index::drop().name("ix_reservations_state_age").table(Reservations::Table).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    UserId,
}
