//! The operator commands, run as a real process against a real database.

use std::process::{Command, Output};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tollgate::db::Db;
use tollgate::db::entities::{api_keys, audit_logs, credit_transactions};

use crate::helpers::{Backend, empty_db_url, spawn_app};
use crate::on_all_backends;

fn tollgate(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "command failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

async fn migrate_creates_every_table_once(backend: Backend) {
    let (url, _dir) = empty_db_url(backend).await;
    let first = stdout(&tollgate(&url, &["migrate"]));
    assert!(first.contains("applied 14 migration(s)"), "{first}");
    let second = stdout(&tollgate(&url, &["migrate"]));
    assert!(second.contains("nothing to apply"), "{second}");
    let db = Db::connect(&url, 2).await.unwrap();
    let tables = [
        "users",
        "accounts",
        "sessions",
        "api_keys",
        "balances",
        "subscriptions",
        "models",
        "reservations",
        "credit_transactions",
        "usage_logs",
        "audit_logs",
        "oauth_states",
        "idempotency_keys",
        "redemption_batches",
        "redemption_codes",
        "channels",
        "channel_keys",
        "key_spend",
        "usage_daily",
        "usage_daily_days",
        "usage_daily_models",
        "usage_daily_payers",
        "response_routes",
    ];
    for table in tables {
        use sea_orm::ConnectionTrait;
        db.read
            .execute_unprepared(&format!("SELECT COUNT(*) FROM {table}"))
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
}

on_all_backends!(migrate_creates_every_table_once);

#[tokio::test]
async fn operator_commands_work_end_to_end() {
    let (url, _dir) = empty_db_url(Backend::Sqlite).await;
    let out = stdout(&tollgate(
        &url,
        &["user", "create", "--email", "Ops@Example.com", "--password", "long-enough-pw", "--admin", "--create"],
    ));
    assert!(out.contains("role admin"), "{out}");

    // `key create` prints only the key, so scripts can capture it.
    let key = stdout(&tollgate(&url, &["key", "create", "--email", "ops@example.com", "--name", "ci"]));
    let key = key.strip_suffix('\n').unwrap();
    assert!(tollgate::keys::is_well_formed(key), "{key:?}");

    let out = stdout(&tollgate(
        &url,
        &["user", "topup", "--email", "ops@example.com", "--amount", "12.50", "--reason", "welcome"],
    ));
    assert!(out.contains("12.50"), "{out}");
    let out = stdout(&tollgate(
        &url,
        &["subscription", "grant", "--email", "ops@example.com", "--tokens", "5000", "--days", "30"],
    ));
    assert!(out.contains("5000 tokens"), "{out}");

    let show: serde_json::Value =
        serde_json::from_str(&stdout(&tollgate(&url, &["user", "show", "--email", "ops@example.com", "--json"])))
            .unwrap();
    assert_eq!(show["role"], "admin");
    assert_eq!(show["balance"], "12.50");
    assert_eq!(show["key_count"], 1);
    assert_eq!(show["subscriptions"][0]["tokens_remaining"], 5000);
    let text = stdout(&tollgate(&url, &["user", "show", "--email", "ops@example.com"]));
    assert!(text.contains("balance: 12.50") && text.contains("5000 of 5000 tokens"), "{text}");

    // Bad input: a clear error, a non-zero exit, nothing changed.
    for args in [
        &["user", "topup", "--email", "ops@example.com", "--amount", "-1", "--reason", "x"][..],
        &["user", "topup", "--email", "ops@example.com", "--amount", "1.2345678", "--reason", "x"],
        &["user", "topup", "--email", "ops@example.com", "--amount", "abc", "--reason", "x"],
        &["user", "topup", "--email", "ops@example.com", "--amount", "5", "--reason", " "],
        &["user", "topup", "--email", "nobody@example.com", "--amount", "5", "--reason", "x"],
        &["user", "create", "--email", "OPS@example.com"],
        &["user", "create", "--email", "not-an-email"],
        &["subscription", "grant", "--email", "ops@example.com", "--tokens", "-5", "--days", "3"],
    ] {
        let o = tollgate(&url, args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(!o.stderr.is_empty(), "{args:?} should say why");
    }
    let again: serde_json::Value =
        serde_json::from_str(&stdout(&tollgate(&url, &["user", "show", "--email", "ops@example.com", "--json"])))
            .unwrap();
    assert_eq!(again["balance"], "12.50");
    assert_eq!(again["subscriptions"].as_array().unwrap().len(), 1);

    // The database holds the hash, the ledger entry and the audit entry, never the plaintext.
    let db = Db::connect(&url, 2).await.unwrap();
    let stored = api_keys::Entity::find().one(&db.read).await.unwrap().unwrap();
    assert_eq!(stored.key_hash, tollgate::keys::hash(key));
    let topups = credit_transactions::Entity::find()
        .filter(credit_transactions::Column::Kind.eq("topup"))
        .all(&db.read)
        .await
        .unwrap();
    assert_eq!(topups.len(), 1);
    assert_eq!((topups[0].amount, topups[0].reason.as_str()), (12_500_000, "welcome"));
    let audit = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("balance.adjust"))
        .one(&db.read)
        .await
        .unwrap()
        .unwrap();
    assert!(audit.after.unwrap().contains("12.50"));
    let raw = std::fs::read(url.trim_start_matches("sqlite://")).unwrap();
    assert!(!raw.windows(key.len()).any(|w| w == key.as_bytes()), "the plaintext key must not be stored");

    // Every command has --help.
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["user", "create", "--help"],
        &["key", "create", "--help"],
        &["subscription", "grant", "--help"],
    ] {
        assert!(tollgate(&url, args).status.success(), "{args:?}");
    }
}

#[test]
fn configuration_errors_name_the_variable() {
    let o = tollgate("oracle://nowhere", &["migrate"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("DATABASE_URL") && err.contains("unsupported"), "{err}");
}

#[tokio::test]
async fn models_keys_and_users_are_managed_from_the_command_line() {
    let (url, _dir) = empty_db_url(Backend::Sqlite).await;
    stdout(&tollgate(&url, &["migrate"]));
    // The starter catalogue is there.
    let list: serde_json::Value = serde_json::from_str(&stdout(&tollgate(&url, &["model", "list", "--json"]))).unwrap();
    let mini = list.as_array().unwrap().iter().find(|m| m["name"] == "gpt-4o-mini").unwrap();
    assert_eq!((mini["input_price"].as_str(), mini["output_price"].as_str()), (Some("0.15"), Some("0.60")));

    let out = stdout(&tollgate(
        &url,
        &[
            "model",
            "set",
            "house-model",
            "--input-price",
            "1.25",
            "--output-price",
            "5",
            "--max-output",
            "2048",
            "--upstream-model",
            "gpt-4o",
        ],
    ));
    assert!(out.contains("input 1.25 / output 5.00"), "{out}");
    assert!(out.contains("cache read default / cache write default") && out.contains("0.00 per request"), "{out}");
    let out = stdout(&tollgate(
        &url,
        &[
            "model",
            "set",
            "house-model",
            "--cache-read-price",
            "0.125",
            "--cache-write-price",
            "2",
            "--request-price",
            "0.01",
        ],
    ));
    assert!(out.contains("cache read 0.125 / cache write 2.00") && out.contains("0.01 per request"), "{out}");
    let out = stdout(&tollgate(&url, &["model", "set", "house-model", "--cache-read-price", "default"]));
    assert!(out.contains("cache read default / cache write 2.00"), "{out}");
    let list: serde_json::Value = serde_json::from_str(&stdout(&tollgate(&url, &["model", "list", "--json"]))).unwrap();
    let house = list.as_array().unwrap().iter().find(|m| m["name"] == "house-model").unwrap();
    assert_eq!(house["cache_read_price"], serde_json::Value::Null);
    assert_eq!((house["cache_write_price"].as_str(), house["request_price"].as_str()), (Some("2.00"), Some("0.01")));
    stdout(&tollgate(&url, &["model", "set", "house-model", "--enabled", "false"]));
    let table = stdout(&tollgate(&url, &["model", "list"]));
    let row = table.lines().find(|l| l.starts_with("house-model")).unwrap();
    assert!(row.contains("false") && row.contains("gpt-4o") && row.contains("2048"), "{row}");
    for bad in [
        &["model", "set", "new-model", "--input-price", "1"][..],
        &["model", "set", "house-model", "--input-price", "-1"],
        &["model", "set", "bad name", "--input-price", "1", "--output-price", "1"],
        &["model", "set", "house-model", "--max-output", "0"],
        &["model", "set", "house-model", "--cache-write-price", "-2"],
        &["model", "set", "house-model", "--request-price", "default"],
    ] {
        let o = tollgate(&url, bad);
        assert!(!o.status.success() && !o.stderr.is_empty(), "{bad:?}");
    }
    // Never used: it can be deleted, once.
    let out = stdout(&tollgate(&url, &["model", "delete", "house-model"]));
    assert!(out.contains("deleted model house-model"), "{out}");
    assert!(!stdout(&tollgate(&url, &["model", "list"])).contains("house-model"));
    assert!(!tollgate(&url, &["model", "delete", "house-model"]).status.success(), "already deleted");

    stdout(&tollgate(&url, &["user", "create", "--email", "cli@example.com"]));
    let key = stdout(&tollgate(&url, &["key", "create", "--email", "cli@example.com"]));
    let db = Db::connect(&url, 2).await.unwrap();
    let row = api_keys::Entity::find().one(&db.read).await.unwrap().unwrap();
    assert_eq!(row.key_hash, tollgate::keys::hash(key.trim()));
    let out = stdout(&tollgate(&url, &["key", "revoke", "--id", &row.id.to_string()]));
    assert!(out.contains("revoked"), "{out}");
    assert!(!tollgate(&url, &["key", "revoke", "--id", &row.id.to_string()]).status.success(), "already revoked");
    let revoked = api_keys::Entity::find_by_id(row.id).one(&db.read).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());

    // Disabling ends the user's sign-in sessions too.
    let user_id = show_id(&url, "cli@example.com");
    for (id, expires) in [("a".repeat(64), i64::MAX), ("b".repeat(64), i64::MAX)] {
        use sea_orm::{ActiveModelTrait, Set};
        tollgate::db::entities::sessions::ActiveModel {
            id: Set(id),
            user_id: Set(Some(user_id)),
            data: Set("{}".into()),
            expires_at: Set(expires),
            created_at: Set(0),
        }
        .insert(&db.write)
        .await
        .unwrap();
    }
    let out = stdout(&tollgate(&url, &["user", "disable", "--email", "cli@example.com"]));
    assert!(out.contains("2 sign-in session(s) ended"), "{out}");
    use sea_orm::PaginatorTrait;
    assert_eq!(tollgate::db::entities::sessions::Entity::find().count(&db.read).await.unwrap(), 0);
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&tollgate(&url, &["user", "show", "--email", "cli@example.com", "--json"])))
            .unwrap();
    assert_eq!(show["disabled"], true);
    stdout(&tollgate(&url, &["user", "enable", "--email", "cli@example.com"]));
}

fn show_id(url: &str, email: &str) -> i64 {
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&tollgate(url, &["user", "show", "--email", email, "--json"]))).unwrap();
    show["id"].as_i64().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A newcomer runs an admin command from another directory: with the default (relative)
/// `DATABASE_URL` it would have created a second, empty database there and reported success.
#[tokio::test]
async fn admin_commands_name_their_database_and_never_create_one_unasked() {
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .current_dir(elsewhere.path())
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let expected = std::path::absolute(elsewhere.path().join("data/tollgate.db")).unwrap();
    for args in [
        &["user", "show", "--email", "ada@example.com"][..],
        &["user", "create", "--email", "ada@example.com"],
        &["key", "create", "--email", "ada@example.com"],
        &["model", "list"],
        &["subscription", "expire"],
    ] {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} must refuse");
        let err = stderr(&o);
        assert!(err.contains(&format!("database: SQLite {}", expected.display())), "{args:?}: {err}");
        assert!(err.contains("--create") && err.contains("working directory"), "{args:?}: {err}");
        assert!(!elsewhere.path().join("data").exists(), "{args:?} created a database");
    }

    // Asked to, it creates the database, and says which.
    let o = run(&["user", "create", "--email", "ada@example.com", "--create"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("database: SQLite {}", expected.display())), "{}", stderr(&o));
    assert!(expected.exists());
    // Once it exists, no flag is needed.
    let o = run(&["user", "show", "--email", "ada@example.com"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // `migrate` (and `serve`) create the database as before: that is their job.
    let (url, _dir) = empty_db_url(Backend::Sqlite).await;
    let o = tollgate(&url, &["migrate"]);
    assert!(o.status.success() && stderr(&o).contains("database: SQLite "), "{}", stderr(&o));

    // A server database is named without its password.
    let o = tollgate("mysql://ops:hunter2-secret@127.0.0.1:1/tollgate", &["user", "show", "--email", "a@b.example"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("database: mysql://ops:***@127.0.0.1:1/tollgate"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// The container's HEALTHCHECK: `tollgate healthcheck` asks /healthz on LISTEN_ADDR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_command_reports_the_server_state() {
    let app = spawn_app(Backend::Sqlite).await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let check = |listen: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_tollgate"))
                .arg("healthcheck")
                .env("LISTEN_ADDR", listen)
                .env_remove("DATABASE_URL")
                .output()
                .unwrap()
        })
    };
    // A wildcard bind, as in the container, is asked on loopback.
    let o = check(format!("0.0.0.0:{port}")).await.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("200"));

    app.stop().await;
    let o = check(format!("127.0.0.1:{port}")).await.unwrap();
    assert!(!o.status.success(), "nothing listens any more");
    assert!(!o.stderr.is_empty());
}

/// The back office from the command line: the same service functions as the admin API.
async fn back_office_commands_share_the_admin_functions(backend: Backend) {
    let (url, _dir) = empty_db_url(backend).await;
    stdout(&tollgate(&url, &["migrate"]));
    stdout(&tollgate(&url, &["user", "create", "--email", "ann@example.com", "--name", "Ann"]));
    stdout(&tollgate(&url, &["user", "create", "--email", "ops@example.com", "--admin"]));
    let key = stdout(&tollgate(&url, &["key", "create", "--email", "ann@example.com", "--name", "laptop"]));

    let out = stdout(&tollgate(
        &url,
        &["user", "adjust", "--email", "ann@example.com", "--amount", "5", "--reason", "credit"],
    ));
    assert!(out.contains("balance is now 5.00"), "{out}");
    let out = stdout(&tollgate(
        &url,
        &["user", "adjust", "--email", "ann@example.com", "--amount", "-3.00", "--reason", "fix"],
    ));
    assert!(out.contains("balance is now 2.00"), "{out}");
    let refused =
        tollgate(&url, &["user", "adjust", "--email", "ann@example.com", "--amount", "-2.01", "--reason", "x"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("the balance is 2.00"), "{}", stderr(&refused));
    assert!(
        !tollgate(&url, &["user", "adjust", "--email", "ann@example.com", "--amount", "0", "--reason", "x"])
            .status
            .success()
    );

    let users: serde_json::Value = serde_json::from_str(&stdout(&tollgate(&url, &["user", "list", "--json"]))).unwrap();
    let ann = users.as_array().unwrap().iter().find(|u| u["email"] == "ann@example.com").unwrap();
    assert_eq!(
        (ann["balance"].as_str(), ann["keys"].as_i64(), ann["name"].as_str()),
        (Some("2.00"), Some(1), Some("Ann"))
    );
    let admins: serde_json::Value =
        serde_json::from_str(&stdout(&tollgate(&url, &["user", "list", "--role", "admin", "--json"]))).unwrap();
    assert_eq!(admins.as_array().unwrap().len(), 1);
    let table = stdout(&tollgate(&url, &["user", "list", "--q", "ann"]));
    assert!(table.contains("ann@example.com") && !table.contains("ops@example.com"), "{table}");
    assert!(!tollgate(&url, &["user", "list", "--status", "gone"]).status.success());

    let keys: serde_json::Value =
        serde_json::from_str(&stdout(&tollgate(&url, &["key", "list", "--email", "ann@example.com", "--json"])))
            .unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["name"], "laptop");
    assert!(!keys.to_string().contains(key.trim()), "never the plaintext");
    let table = stdout(&tollgate(&url, &["key", "list", "--email", "ann@example.com"]));
    assert!(table.contains("laptop") && table.contains("active"), "{table}");

    let log: serde_json::Value = serde_json::from_str(&stdout(&tollgate(&url, &["audit", "list", "--json"]))).unwrap();
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["balance.adjust", "balance.adjust"], "newest first; the refused change left nothing");
    assert_eq!(log[0]["after"]["balance"], "2.00");
    assert_eq!(log[0]["before"]["balance"], "5.00");
    assert!(log[0]["actorUserId"].is_null(), "the command line acts as the system");
    let table = stdout(&tollgate(&url, &["audit", "list", "--action", "balance"]));
    assert!(table.contains("balance.adjust") && table.contains("system"), "{table}");

    let db = Db::connect(&url, 2).await.unwrap();
    let user = tollgate::accounts::require_by_email(&db.read, "ann@example.com").await.unwrap();
    crate::helpers::assert_books_balance(&db, user.id).await;
}

on_all_backends!(back_office_commands_share_the_admin_functions);

/// `dev seed-usage` fills a database for the data-at-scale benchmark: customers with a key
/// each, usage rows inside the window, reused customers on a second run; `dev query-times`
/// then times every dashboard and back-office query against it.
async fn dev_seed_usage_fills_the_window_and_query_times_reads_it(backend: Backend) {
    use sea_orm::{ConnectionTrait, PaginatorTrait};
    use tollgate::db::entities::{usage_logs, users};

    let (url, _dir) = empty_db_url(backend).await;
    let seeded =
        stdout(&tollgate(&url, &["--create", "dev", "seed-usage", "--rows", "2500", "--users", "20", "--days", "30"]));
    assert!(seeded.contains("seeded 2500 usage rows over 30 days for 20 customers"), "{seeded}");
    let db = Db::connect(&url, 2).await.unwrap();
    let customers =
        users::Entity::find().filter(users::Column::Email.ends_with("@seed.invalid")).all(&db.read).await.unwrap();
    assert_eq!(customers.len(), 20);
    for c in &customers {
        assert_eq!(
            api_keys::Entity::find().filter(api_keys::Column::UserId.eq(c.id)).count(&db.read).await.unwrap(),
            1
        );
    }
    let rows = usage_logs::Entity::find().all(&db.read).await.unwrap();
    assert_eq!(rows.len(), 2500);
    let now = tollgate::clock::now_ms();
    let window = now - 30 * tollgate::clock::MS_PER_DAY;
    for r in &rows {
        assert!((window..=now).contains(&r.created_at), "a row outside the window: {}", r.created_at);
        assert_eq!(r.day, tollgate::clock::day_of(r.created_at));
        assert_eq!(r.total_tokens, r.prompt_tokens + r.completion_tokens);
        assert!(customers.iter().any(|c| c.id == r.user_id));
    }
    // Oldest first, as a live table grows: ids follow time (within one row's share of jitter).
    let mut by_id = rows.clone();
    by_id.sort_by_key(|r| r.id);
    let slot = 30 * tollgate::clock::MS_PER_DAY / 2500 + 1;
    assert!(by_id.windows(2).all(|w| w[1].created_at + slot >= w[0].created_at), "ids do not follow time");
    assert!(
        by_id[2499].created_at - by_id[0].created_at > 29 * tollgate::clock::MS_PER_DAY,
        "the rows span the window"
    );

    let again = stdout(&tollgate(&url, &["dev", "seed-usage", "--rows", "500", "--users", "20", "--days", "30"]));
    assert!(again.contains("seeded 500"), "{again}");
    assert_eq!(users::Entity::find().count(&db.read).await.unwrap(), 20, "customers are reused");
    assert_eq!(usage_logs::Entity::find().count(&db.read).await.unwrap(), 3000);

    let times = stdout(&tollgate(&url, &["dev", "query-times", "--runs", "1"]));
    assert!(times.contains("usage_logs: 3000 rows"), "{times}");
    for query in [
        "usage totals",
        "usage page 1 (20 rows)",
        "usage page 50",
        "CSV export, 10,000 rows",
        "daily chart, 30 days",
        "daily chart, 90 days",
        "admin revenue by month, 90 days",
        "admin revenue by day, 30 days",
    ] {
        assert!(times.contains(&format!("| {query}")), "{query} missing from:\n{times}");
    }
    let topups: i64 = db
        .read
        .query_one_raw(sea_orm::Statement::from_string(
            db.read.get_database_backend(),
            "SELECT COUNT(*) AS n FROM credit_transactions WHERE kind = 'topup'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "n")
        .unwrap();
    assert_eq!(topups, 40, "one top-up per customer per run");
}

on_all_backends!(dev_seed_usage_fills_the_window_and_query_times_reads_it);
