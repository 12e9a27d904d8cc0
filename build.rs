//! Marks which test backends this build can reach, so the test macro reports a backend whose
//! URL is missing as ignored (skipped) instead of passed.

fn main() {
    println!("cargo::rerun-if-env-changed=CI");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    for (var, cfg) in [
        ("TEST_MYSQL_URL", "tollgate_test_mysql"),
        ("TEST_POSTGRES_URL", "tollgate_test_postgres"),
        ("TEST_REDIS_URL", "tollgate_test_redis"),
        ("TOLLGATE_PYTHON", "tollgate_test_python"),
        ("TOLLGATE_AGENT_CLIS", "tollgate_test_agents"),
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

    // The browser test needs Chromium and playwright-core (`.ci/run` installs both before it
    // builds). Installing them later on a developer machine needs `touch build.rs`.
    println!("cargo::rerun-if-changed=tests/browser/package-lock.json");
    println!("cargo::rustc-check-cfg=cfg(tollgate_test_browser)");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    println!("cargo::rerun-if-env-changed=CHROMIUM");
    let modules = std::path::Path::new("tests/browser/node_modules/playwright-core");
    if std::path::Path::new(&chromium).exists() && modules.exists() {
        println!("cargo::rustc-cfg=tollgate_test_browser");
    } else if ci {
        panic!("Chromium ({chromium}) and tests/browser/node_modules must be installed in CI");
    }

    // The Node SDK test needs `node` and the pinned `openai` package (same `npm ci`).
    println!("cargo::rustc-check-cfg=cfg(tollgate_test_node_openai)");
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if node && std::path::Path::new("tests/browser/node_modules/openai/package.json").exists() {
        println!("cargo::rustc-cfg=tollgate_test_node_openai");
    } else if ci {
        panic!("node and tests/browser/node_modules (with openai) must be installed in CI");
    }
}
