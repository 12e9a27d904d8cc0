//! The model catalogue's service functions: every change is audited, reaches the gateway's
//! cached lookup at once, and a model that was billed for cannot be deleted.

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tollgate::audit::Actor;
use tollgate::db::entities::audit_logs;
use tollgate::error::Error;
use tollgate::models::{self, ModelChange};

use crate::helpers::{Backend, Mode, chat_body, spawn_gateway};
use crate::on_all_backends;

fn priced(input: i64, output: i64) -> ModelChange {
    ModelChange { input_price: Some(input), output_price: Some(output), ..Default::default() }
}

async fn audit_count(db: &tollgate::db::Db, action: &str) -> u64 {
    audit_logs::Entity::find().filter(audit_logs::Column::Action.eq(action)).count(&db.read).await.unwrap()
}

async fn catalogue_changes_are_audited_and_seen_at_once(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (db, cache) = (&g.app.db, g.app.cache());

    let m =
        models::create(db, &cache, "fresh-model", priced(1_000_000, 2_000_000), &Actor::admin(7, None)).await.unwrap();
    assert!(matches!(
        models::create(db, &cache, "fresh-model", priced(1, 1), &Actor::system()).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        models::create(db, &cache, "no-prices", ModelChange::default(), &Actor::system()).await,
        Err(Error::BadRequest(_))
    ));
    // The lookup caches the configuration; an update must not be hidden behind it.
    assert_eq!(models::lookup(db, &cache, "fresh-model").await.unwrap().input_price, 1_000_000);
    models::update(
        db,
        &cache,
        m.id,
        ModelChange { input_price: Some(3_000_000), ..Default::default() },
        &Actor::system(),
    )
    .await
    .unwrap();
    assert_eq!(models::lookup(db, &cache, "fresh-model").await.unwrap().input_price, 3_000_000);

    // A rename: the old name is unknown at once, the new one served.
    models::update(
        db,
        &cache,
        m.id,
        ModelChange { name: Some("renamed-model".into()), ..Default::default() },
        &Actor::system(),
    )
    .await
    .unwrap();
    assert!(matches!(models::lookup(db, &cache, "fresh-model").await, Err(Error::ModelNotFound(_))));
    assert_eq!(models::lookup(db, &cache, "renamed-model").await.unwrap().id, m.id);

    models::set_enabled(db, &cache, m.id, false, &Actor::system()).await.unwrap();
    assert!(matches!(models::lookup(db, &cache, "renamed-model").await, Err(Error::ModelNotFound(_))));
    models::set_enabled(db, &cache, m.id, true, &Actor::system()).await.unwrap();
    assert!(models::lookup(db, &cache, "renamed-model").await.is_ok());

    // Bad values change nothing.
    let bad = ModelChange { output_price: Some(-1), ..Default::default() };
    assert!(matches!(models::update(db, &cache, m.id, bad, &Actor::system()).await, Err(Error::BadRequest(_))));
    let bad = ModelChange { cap_field: Some("max_length".into()), ..Default::default() };
    assert!(matches!(models::update(db, &cache, m.id, bad, &Actor::system()).await, Err(Error::BadRequest(_))));
    assert!(matches!(
        models::update(db, &cache, 999_999, ModelChange::default(), &Actor::system()).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(models::find(&db.read, m.id).await.unwrap().output_price, 2_000_000);

    // Unused: deleted, and gone for the gateway at once.
    models::delete(db, &cache, m.id, &Actor::admin(7, None)).await.unwrap();
    assert!(matches!(models::lookup(db, &cache, "renamed-model").await, Err(Error::ModelNotFound(_))));
    assert!(matches!(models::find(&db.read, m.id).await, Err(Error::NotFound(_))));
    for action in ["model.create", "model.update", "model.disable", "model.enable", "model.delete"] {
        assert!(audit_count(db, action).await >= 1, "{action} audited");
    }
    let deleted = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("model.delete"))
        .one(&db.read)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted.actor_user_id, Some(7));
    assert!(deleted.before.unwrap().contains("renamed-model") && deleted.after.is_none());

    // Used (a request was billed for it): refused with a conflict, the model stays.
    let (user, key) = g.app.customer("used@example.com", 1_000_000).await;
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    g.app.settled(user).await;
    let used = models::find_by_name(&db.read, crate::helpers::MODEL).await.unwrap();
    assert!(matches!(models::delete(db, &cache, used.id, &Actor::system()).await, Err(Error::Conflict(_))));
    assert!(models::lookup(db, &cache, crate::helpers::MODEL).await.is_ok());
}

/// A request that read the old row just before a change committed writes it back into the cache
/// just after the change dropped it: the stale copy is gone again within about a second, not
/// served for the cache's full minute.
async fn a_stale_copy_written_back_after_a_change_does_not_last(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (db, cache) = (&g.app.db, g.app.cache());
    let m = models::create(db, &cache, "raced-model", priced(1_000_000, 2_000_000), &Actor::system()).await.unwrap();
    assert_eq!(models::lookup(db, &cache, "raced-model").await.unwrap().input_price, 1_000_000);
    let key = tollgate::cache::model_config("raced-model");
    let old = cache.get(&key).await.expect("the lookup cached the configuration");
    models::update(
        db,
        &cache,
        m.id,
        ModelChange { input_price: Some(5_000_000), ..Default::default() },
        &Actor::system(),
    )
    .await
    .unwrap();
    // The racing request's write lands after the change's delete.
    cache.set(&key, &old, tollgate::cache::MODEL_TTL).await;
    assert_eq!(models::lookup(db, &cache, "raced-model").await.unwrap().input_price, 1_000_000, "the stale copy");
    crate::helpers::eventually(5, "the stale copy is dropped", || async {
        models::lookup(db, &cache, "raced-model").await.unwrap().input_price == 5_000_000
    })
    .await;
}

/// A usage row alone (a refusal writes one without any reservation) keeps its model from being
/// deleted: the books keep naming what they recorded. Once no row names it, it can go.
async fn a_model_named_by_a_usage_row_is_kept(backend: Backend) {
    use sea_orm::{ActiveModelTrait, Set};
    use tollgate::db::entities::usage_logs;
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (db, cache) = (&g.app.db, g.app.cache());
    let m = models::create(db, &cache, "logged-model", priced(1, 1), &Actor::system()).await.unwrap();
    let user = crate::helpers::user_with_balance(db, "logged@example.com", 0).await;
    let now = tollgate::clock::now_ms();
    let row = usage_logs::ActiveModel {
        request_id: Set("req-logged".into()),
        user_id: Set(user),
        model: Set("logged-model".into()),
        prompt_tokens: Set(0),
        completion_tokens: Set(0),
        total_tokens: Set(0),
        cost: Set(0),
        subscription_tokens: Set(0),
        status_code: Set(402),
        latency_ms: Set(1),
        stream: Set(false),
        usage_source: Set("none".into()),
        created_at: Set(now),
        day: Set(tollgate::clock::day_of(now)),
        request_count: Set(1),
        ..Default::default()
    }
    .insert(&db.write)
    .await
    .unwrap();
    assert!(matches!(models::delete(db, &cache, m.id, &Actor::system()).await, Err(Error::Conflict(_))));
    assert_eq!(models::find(&db.read, m.id).await.unwrap().name, "logged-model");
    usage_logs::Entity::delete_by_id(row.id).exec(&db.write).await.unwrap();
    models::delete(db, &cache, m.id, &Actor::system()).await.unwrap();
    assert!(matches!(models::find(&db.read, m.id).await, Err(Error::NotFound(_))));
}

on_all_backends!(
    a_stale_copy_written_back_after_a_change_does_not_last,
    catalogue_changes_are_audited_and_seen_at_once,
    a_model_named_by_a_usage_row_is_kept
);
