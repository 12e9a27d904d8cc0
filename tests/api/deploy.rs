//! The deployment files agree with the binary: `.env.example` lists exactly the variables the
//! binary reads, and the Dockerfile, compose files and Kubernetes manifests parse and keep their
//! promises (health checks, two replicas, probes, a grace period longer than the shutdown
//! grace). No container engine or cluster runs here, so these checks are what proves the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_yaml_ng::Value;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// String literals in Rust source that look like environment variable names.
fn upper_case_literals(source: &str) -> BTreeSet<String> {
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() >= 3
                && s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

fn rust_files(dir: PathBuf, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Every environment variable the binary reads, from its source: each name looked up in
/// `Config::from_lookup` (the upper-case string literals of its body), each literal given to
/// `env::var` anywhere in `src/`, and `RUST_LOG`, read by the tracing filter.
fn variables_the_binary_reads() -> BTreeSet<String> {
    let config = read("src/config.rs");
    let start = config.find("pub fn from_lookup").expect("Config::from_lookup in src/config.rs");
    // The method ends at the first closing brace at its own indentation (inside `impl Config`).
    let end = start + config[start..].find("\n    }\n").expect("the end of from_lookup");
    let mut names = upper_case_literals(&config[start..end]);

    let mut files = Vec::new();
    rust_files(repo_file("src"), &mut files);
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        for (i, _) in source.match_indices("env::var(\"") {
            let rest = &source[i + "env::var(\"".len()..];
            names.insert(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    assert!(read("src/telemetry.rs").contains("from_default_env"), "the log filter is read from RUST_LOG");
    names.insert("RUST_LOG".to_owned());
    for expected in ["DATABASE_URL", "LISTEN_ADDR", "NEXTAUTH_SECRET", "GITHUB_API_URL", "SHUTDOWN_GRACE_SECS"] {
        assert!(names.contains(expected), "the source scan missed {expected}: {names:?}");
    }
    names
}

/// The names `.env.example` sets or shows commented out (`NAME=…` or `# NAME=…`).
fn env_example_names() -> BTreeSet<String> {
    read(".env.example")
        .lines()
        .filter_map(|line| {
            let line = line.trim_start_matches('#').trim_start();
            let (name, _) = line.split_once('=')?;
            (!name.is_empty()
                && name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn env_example_lists_exactly_the_variables_the_binary_reads() {
    let read_by_binary = variables_the_binary_reads();
    let documented = env_example_names();
    let undocumented: Vec<_> = read_by_binary.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&read_by_binary).collect();
    assert!(undocumented.is_empty(), "read by the binary but missing from .env.example: {undocumented:?}");
    assert!(unknown.is_empty(), "in .env.example but never read by the binary: {unknown:?}");
}

fn yaml(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or_else(|| panic!("{path:?} is not a string: {v:?}"))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for key in path {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(*key),
        }
        .unwrap_or_else(|| panic!("missing {key} of {path:?}"));
    }
    cur
}

fn keys(v: &Value) -> Vec<String> {
    v.as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_owned()).collect()
}

/// A compose duration such as `40s` or `1m30s`, in seconds.
fn seconds(duration: &str) -> u64 {
    let (mut total, mut number) = (0, String::new());
    for c in duration.chars() {
        if c.is_ascii_digit() {
            number.push(c);
        } else {
            let n: u64 = number.parse().unwrap();
            number.clear();
            total += match c {
                's' => n,
                'm' => n * 60,
                'h' => n * 3600,
                other => panic!("unit {other} in {duration}"),
            };
        }
    }
    assert!(number.is_empty(), "{duration} has no unit");
    total
}

#[test]
fn compose_files_start_the_app_after_healthy_dependencies() {
    let variables = variables_the_binary_reads();
    for (file, database, image) in
        [("docker-compose.yml", "mysql", "mysql:8.0"), ("compose.postgres.yml", "postgres", "postgres:")]
    {
        let doc = &yaml(file)[0];
        let services = at(doc, &["services"]);
        assert!(str_of(services, &[database, "image"]).starts_with(image), "{file}");
        assert_eq!(str_of(services, &["redis", "image"]), "redis:7-alpine", "{file}");

        let app = at(services, &["app"]);
        assert!(app.get("build").is_some(), "{file}: the app is built from the Dockerfile");
        let env = at(app, &["environment"]);
        for name in keys(env) {
            assert!(variables.contains(&name), "{file}: app sets {name}, which the binary never reads");
        }
        assert_eq!(str_of(env, &["LISTEN_ADDR"]), "0.0.0.0:3000", "{file}");
        let db_url =
            url::Url::parse(&str_of(env, &["DATABASE_URL"]).replace("${", "").replace(":-", "-").replace('}', ""))
                .unwrap();
        assert!(db_url.scheme().starts_with(database), "{file}: {db_url}");
        assert_eq!(db_url.host_str(), Some(database), "{file}: the app reaches the database by its service name");
        assert_eq!(str_of(env, &["REDIS_URL"]), "redis://redis:6379", "{file}");
        let grace: u64 = str_of(env, &["SHUTDOWN_GRACE_SECS"]).parse().unwrap();
        assert!(
            seconds(str_of(app, &["stop_grace_period"])) > grace,
            "{file}: stop_grace_period must exceed the shutdown grace"
        );
        assert!(at(app, &["ports"]).as_sequence().unwrap().iter().any(|p| p.as_str() == Some("3000:3000")), "{file}");

        // Every dependency has a health check and the app waits for it.
        for dep in [database, "redis"] {
            assert_eq!(str_of(app, &["depends_on", dep, "condition"]), "service_healthy", "{file}: {dep}");
            assert!(at(services, &[dep, "healthcheck", "test"]).as_sequence().is_some(), "{file}: {dep} health check");
        }
        let app_check = at(app, &["healthcheck", "test"]).as_sequence().unwrap();
        assert!(app_check.iter().any(|a| a.as_str() == Some("healthcheck")), "{file}: {app_check:?}");

        // Named volumes are declared.
        let declared = keys(at(doc, &["volumes"]));
        for (name, service) in services.as_mapping().unwrap() {
            for volume in service.get("volumes").and_then(Value::as_sequence).into_iter().flatten() {
                let source = volume.as_str().unwrap().split(':').next().unwrap();
                if !source.starts_with(['.', '/']) {
                    assert!(declared.iter().any(|d| d == source), "{file}: {name:?} uses undeclared volume {source}");
                }
            }
        }
    }
}

/// The manifests in `deploy/k8s/` (and the Secret template), by kind.
fn manifests() -> BTreeMap<String, Value> {
    let mut by_kind = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(repo_file("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml") || n == "secret.yaml.example")
        // A filled-in secret.yaml is the operator's, not the repository's.
        .filter(|n| n != "secret.yaml")
        .collect();
    files.sort();
    for file in files {
        for doc in yaml(&format!("deploy/k8s/{file}")) {
            for field in ["apiVersion", "kind"] {
                assert!(doc.get(field).and_then(Value::as_str).is_some(), "{file}: no {field}");
            }
            assert!(!str_of(&doc, &["metadata", "name"]).is_empty(), "{file}");
            let kind = str_of(&doc, &["kind"]).to_owned();
            assert!(by_kind.insert(kind.clone(), doc).is_none(), "{file}: a second {kind}");
        }
    }
    by_kind
}

#[test]
fn kubernetes_manifests_run_two_probed_replicas_that_drain_before_they_are_killed() {
    let variables = variables_the_binary_reads();
    let m = manifests();
    for kind in ["Deployment", "Service", "ConfigMap", "Secret", "CronJob"] {
        assert!(m.contains_key(kind), "deploy/k8s has no {kind}: {:?}", m.keys());
    }
    let (deployment, config_map, secret, service) = (&m["Deployment"], &m["ConfigMap"], &m["Secret"], &m["Service"]);
    let settings = at(config_map, &["data"]);
    for name in keys(settings).into_iter().chain(keys(at(secret, &["stringData"]))) {
        assert!(variables.contains(&name), "{name} is set but the binary never reads it");
    }

    let spec = at(deployment, &["spec"]);
    assert_eq!(at(spec, &["replicas"]).as_u64(), Some(2));
    let pod = at(spec, &["template"]);
    let container = at(pod, &["spec", "containers", "0"]);
    assert_eq!(str_of(container, &["readinessProbe", "httpGet", "path"]), "/readyz");
    assert_eq!(str_of(container, &["livenessProbe", "httpGet", "path"]), "/healthz");
    for resource in ["cpu", "memory"] {
        assert!(container.get("resources").and_then(|r| r.get("requests")).and_then(|r| r.get(resource)).is_some());
    }

    // The grace period covers the preStop pause and the whole shutdown grace.
    let shutdown_grace: u64 = str_of(settings, &["SHUTDOWN_GRACE_SECS"]).parse().unwrap();
    let pre_stop = container
        .get("lifecycle")
        .and_then(|l| l.get("preStop"))
        .and_then(|p| p.get("sleep"))
        .and_then(|s| s.get("seconds"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let termination = at(pod, &["spec", "terminationGracePeriodSeconds"]).as_u64().unwrap();
    assert!(termination > shutdown_grace + pre_stop, "{termination} s <= {shutdown_grace} s + {pre_stop} s");

    // The settings and secrets the pods load are the ones defined here.
    let sources = at(container, &["envFrom"]).as_sequence().unwrap();
    let source = |kind: &str| sources.iter().find_map(|s| s.get(kind)).map(|r| str_of(r, &["name"]));
    assert_eq!(source("configMapRef"), Some(str_of(config_map, &["metadata", "name"])));
    assert_eq!(source("secretRef"), Some(str_of(secret, &["metadata", "name"])));

    // The container listens where the probes and the Service look.
    let port = at(container, &["ports", "0"]);
    let listen: std::net::SocketAddr = str_of(settings, &["LISTEN_ADDR"]).parse().unwrap();
    assert!(listen.ip().is_unspecified(), "{listen}: must listen on every interface in a pod");
    assert_eq!(Some(u64::from(listen.port())), at(port, &["containerPort"]).as_u64());
    let port_name = str_of(port, &["name"]);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(str_of(container, &[probe, "httpGet", "port"]), port_name);
    }
    assert_eq!(str_of(service, &["spec", "ports", "0", "targetPort"]), port_name);
    let pod_labels = at(pod, &["metadata", "labels"]);
    for (k, v) in at(service, &["spec", "selector"]).as_mapping().unwrap() {
        assert_eq!(pod_labels.get(k.as_str().unwrap()), Some(v), "the Service selects the pods");
    }

    // The CronJob calls the cron endpoint through the Service with the Secret's CRON_SECRET.
    let job = at(&m["CronJob"], &["spec", "jobTemplate", "spec", "template", "spec", "containers", "0"]);
    let args: Vec<&str> = at(job, &["args"]).as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let service_name = str_of(service, &["metadata", "name"]);
    assert!(args.contains(&format!("http://{service_name}/api/cron/expire-subscriptions").as_str()), "{args:?}");
    assert!(args.contains(&"Authorization: Bearer $(CRON_SECRET)"), "{args:?}");
    let env = at(job, &["env", "0"]);
    assert_eq!(str_of(env, &["name"]), "CRON_SECRET");
    assert_eq!(str_of(env, &["valueFrom", "secretKeyRef", "name"]), str_of(secret, &["metadata", "name"]));
}

#[test]
fn dockerfile_builds_as_ci_does_and_runs_unprivileged_with_a_health_check() {
    let dockerfile = read("Dockerfile");
    let rust_version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap()
        .to_owned();
    assert!(
        dockerfile.lines().any(|l| l.starts_with(&format!("FROM rust:{rust_version}-"))),
        "the build stage uses the pinned toolchain {rust_version}"
    );
    assert!(dockerfile.contains("cargo build --release --locked"));
    for line in ["LISTEN_ADDR=0.0.0.0:3000", "DATABASE_URL=sqlite:///data/tollgate.db", "VOLUME [\"/data\"]"] {
        assert!(dockerfile.contains(line), "{line}");
    }
    let user = dockerfile.lines().filter_map(|l| l.strip_prefix("USER ")).next_back().unwrap();
    assert!(!user.starts_with("root") && !user.starts_with("0"), "USER {user}");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"healthcheck\""));
    let ignored = read(".dockerignore");
    for entry in ["target", ".git", ".env", "data"] {
        assert!(ignored.lines().any(|l| l == entry), ".dockerignore: {entry}");
    }
}
