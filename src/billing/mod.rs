//! Every money statement of Tollgate lives here.
//!
//! The flow of one request:
//! 1. **Reserve** before any upstream byte: the worst case (every prompt token at the dearest
//!    input-side price, the output cap at the output price, the price per request) is taken
//!    from the user's subscriptions, earliest expiry first, and the rest is priced and deducted
//!    from the balance with a conditional `UPDATE … WHERE amount >= ?`. A `reservations` row
//!    records what came from where. Not enough → `InsufficientBalance`, nothing changed.
//! 2. **Proxy**, reusing the one reservation across retries.
//! 3. **Resolve** exactly once, in one transaction guarded by `WHERE state = 'pending'`: charge
//!    the real usage (never more than reserved), return the rest to the source it came from,
//!    write the usage log. A second resolve is a no-op.
//! 4. The **sweeper** charges reservations left pending past the maximum request time (a crashed
//!    process): an interrupted pre-charge is not refunded.
//!
//! Money is integer micro-units; prices are micro-units per 1M tokens.

pub mod balance;
pub mod key_spend;
pub mod ledger;
pub mod pricing;
pub mod reconcile;
pub mod reservations;
pub mod store;

pub use pricing::{CacheWrites, Charge, Prices, charge_for, worst_case};
pub use reservations::{
    FinalState, Reservation, ReserveRequest, Resolution, Resolved, Served, UsageLog, reserve, resolve,
    resolve_reservation, resolve_reservation_served, sweep_stale, usage_row,
};
