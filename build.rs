//! Marks which test backends this build can reach, so the test macro reports a backend whose
//! URL is missing as ignored (skipped) instead of passed.

fn main() {
    println!("cargo::rerun-if-env-changed=CI");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    for (var, cfg) in [
        ("TEST_MYSQL_URL", "tollgate_test_mysql"),
        ("TEST_POSTGRES_URL", "tollgate_test_postgres"),
        ("TEST_REDIS_URL", "tollgate_test_redis"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var(var).is_ok_and(|v| !v.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        } else if ci {
            // In CI every backend runs: a missing URL must fail, never turn into skips.
            panic!("{var} must be set in CI: backend tests never skip there");
        }
    }
}
