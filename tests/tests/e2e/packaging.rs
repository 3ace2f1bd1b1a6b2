//! Packaging (docs/operations.md "Install with Helm", "Containers", "systemd"), checked offline:
//! tests/packaging/check.py renders, lints and validates both Helm charts and hadolints the
//! Dockerfiles with the pinned packaging venv; negative controls prove its checks bite (a literal
//! KEK, a Dockerfile hadolint rejects). The systemd units are verified by `systemd-analyze
//! verify` in a scratch root holding the real built binaries at their ExecStart paths, and the
//! broker's hardening is held to an exposure score by `systemd-analyze security --offline`. The
//! broker chart's rendered configuration passes `keyward check-config` and serves on PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyward_tests::broker::Broker;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{binary, build_dir, free_addr, http, venv, workspace_root};

/// The packaging venv's Python: `KEYWARD_PACKAGING_VENV`, else `packaging/` beside the test
/// peers' venv (scripts/install-test-peers makes both).
fn packaging_python() -> PathBuf {
    let dir = std::env::var_os("KEYWARD_PACKAGING_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| venv().parent().expect("the venv has a parent").join("packaging"));
    let python = dir.join("bin/python");
    assert!(
        python.is_file() && dir.join("bin/hadolint").is_file(),
        "the packaging venv is missing at {}: run scripts/install-test-peers",
        dir.display()
    );
    python
}

/// Runs tests/packaging/check.py with `args`.
fn check(args: &[&str]) -> (Output, String) {
    let script = workspace_root().join("tests/packaging/check.py");
    let output = Command::new(packaging_python()).arg(script).args(args).output().expect("run check.py");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output, report)
}

#[test]
fn the_charts_and_dockerfiles_pass_the_packaging_checks() {
    let (output, report) = check(&[]);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("packaging check: every check passed"), "{report}");
    for line in [
        "keyward (defaults): helm lint (strict)",
        "keyward (keyward-scale.yaml): replicas 3 = values' replicaCount 3",
        "keyward (keyward-scale.yaml): the ServiceMonitor scrapes /metrics",
        "keyward (defaults): the KEK (/etc/keyward/kek/kek) from a Secret",
        "keyward (defaults): readiness probe on /readyz",
        "keyward (defaults): a PodDisruptionBudget selecting the broker pods",
        "keyward-agent (defaults): the data dir (/var/lib/keyward-agent/agent) is on a volumeClaimTemplate",
        "keyward-agent (keyward-agent-process.yaml): init container join runs without privileges or capabilities",
        "keyward-agent (defaults): sandbox isolation gets the privileged container it needs",
        "keyward-agent (keyward-agent-process.yaml): process isolation runs unprivileged",
        "keyward-agent (defaults): a preStop hook that drains",
        "keyward-agent (defaults): StatefulSet/kw-keyward-agent valid against Kubernetes 1.33.0 (strict)",
        "hadolint Dockerfile.broker (no warning or error)",
        "hadolint Dockerfile.agent (no warning or error)",
    ] {
        assert!(report.contains(&format!("ok    {line}")), "missing `{line}`:\n{report}");
    }
    assert!(
        report.contains("note  keyward (keyward-scale.yaml): ServiceMonitor/kw-keyward: a custom resource"),
        "{report}"
    );
}

#[test]
fn a_literal_kek_an_unknown_field_and_a_bad_dockerfile_fail_the_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("literal-kek.yaml");
    std::fs::write(
        &values,
        "extraEnv:\n  - name: KEYWARD_KEK\n    value: \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\"\n\
         extraVolumes:\n  - name: scratch\n    emptyDir: {}\n    sizeLimt: 1Gi\n",
    )
    .expect("write values");
    let (output, report) = check(&["--values", &format!("keyward={}", values.display())]);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL  keyward (literal-kek.yaml): container keyward: KEYWARD_KEK is a literal value"),
        "{report}"
    );
    assert!(report.contains("at spec.template.spec.volumes.4: Additional properties are not allowed"), "{report}");
    assert!(report.contains("packaging check: 2 problem(s)"), "{report}");

    let dockerfiles = dir.path().join("docker");
    std::fs::create_dir(&dockerfiles).expect("mkdir");
    std::fs::write(dockerfiles.join("Dockerfile.bad"), "FROM debian:latest\nRUN apt-get install curl\n")
        .expect("write");
    let (output, report) = check(&["--dockerfiles", dockerfiles.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("FAIL  hadolint Dockerfile.bad"), "{report}");
    assert!(report.contains("DL3007"), "`latest` must be flagged:\n{report}");
}

/// A scratch root for `systemd-analyze --root`: the system's units (targets the services are
/// wanted by), `/bin/kill` (the broker's ExecReload), the units under test and the workspace's
/// built binaries at their ExecStart paths. Beneath the build directory, so binaries hard-link.
fn scratch_root(units: &[&str], binaries: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir_in(build_dir()).expect("tempdir");
    let at = |path: &str| root.path().join(path);
    for dir in ["etc/systemd/system", "usr/local/bin", "usr/lib/systemd", "bin"] {
        std::fs::create_dir_all(at(dir)).expect("mkdir");
    }
    let copied = Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(at("usr/lib/systemd")).status();
    assert!(copied.expect("cp").success(), "cannot copy /usr/lib/systemd/system");
    std::fs::copy("/bin/kill", at("bin/kill")).expect("copy /bin/kill");
    for unit in units {
        let source = workspace_root().join("deploy/systemd").join(unit);
        std::fs::copy(&source, at("etc/systemd/system").join(unit)).expect("copy unit");
    }
    for name in binaries {
        let target = at("usr/local/bin").join(name);
        std::fs::hard_link(binary(name), &target)
            .or_else(|_| std::fs::copy(binary(name), &target).map(drop))
            .expect("place the binary");
    }
    root
}

fn systemd_analyze(root: &Path, args: &[&str], unit: &str) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(format!("--root={}", root.display()))
        .arg(root.join("etc/systemd/system").join(unit))
        .output()
        .expect("systemd-analyze (systemd) must be installed")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn the_systemd_units_verify_and_the_broker_is_hardened() {
    let units = ["keyward.service", "keyward-agent.service"];
    let root = scratch_root(&units, &["keyward", "keyward-agent"]);
    for unit in units {
        let verified = systemd_analyze(root.path(), &["verify"], unit);
        // verify exits 0 on unknown keys but says so: any output is a problem.
        assert!(verified.status.success() && text(&verified).is_empty(), "{unit}: {}", text(&verified));
    }
    // Exposure at most 2.0 of 10 (`systemd-analyze security` exits 1 above the threshold).
    let security = systemd_analyze(root.path(), &["security", "--offline=yes", "--threshold=20"], "keyward.service");
    assert!(security.status.success(), "{}", text(&security));
    assert!(text(&security).contains("Overall exposure level for keyward.service: 1."), "{}", text(&security));

    // The agent's sandbox needs namespaces, its own /proc and cgroups: the unit must not take them away.
    let agent = std::fs::read_to_string(workspace_root().join("deploy/systemd/keyward-agent.service")).expect("read");
    for setting in
        ["RestrictNamespaces=", "PrivateUsers=", "ProtectKernelTunables=", "ProtectControlGroups=", "ProtectProc="]
    {
        assert!(!agent.lines().any(|line| line.starts_with(setting)), "keyward-agent.service sets {setting}");
    }
    for setting in ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "Delegate=yes"]
    {
        assert!(agent.lines().any(|line| line == setting), "keyward-agent.service lacks {setting}");
    }
}

#[test]
fn systemd_analyze_refuses_a_missing_binary_and_an_unknown_key() {
    let root = scratch_root(&["keyward.service"], &[]);
    let missing = systemd_analyze(root.path(), &["verify"], "keyward.service");
    assert!(!missing.status.success(), "{}", text(&missing));
    assert!(text(&missing).contains("/usr/local/bin/keyward is not executable"), "{}", text(&missing));

    let unit = root.path().join("etc/systemd/system/keyward.service");
    let original = std::fs::read_to_string(&unit).expect("read");
    std::fs::write(&unit, original.replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomeTypo=yes")).expect("write");
    let typo = systemd_analyze(root.path(), &["verify"], "keyward.service");
    assert!(text(&typo).contains("Unknown key 'ProtectHomeTypo'"), "{}", text(&typo));
}

/// The broker chart's rendered `keyward.toml` of `case`, with the container's paths (the mounted
/// KEK, the data directory) moved beneath `dir`, where a 0600 KEK file is written.
fn chart_config(dir: &Path, case: &str) -> String {
    let configs = dir.join("configs");
    if !configs.is_dir() {
        std::fs::create_dir(&configs).expect("mkdir");
        let (output, report) = check(&["--write-configs", configs.to_str().expect("utf-8 path")]);
        assert!(output.status.success(), "{report}");
        let kek = dir.join("kek");
        std::fs::write(&kek, format!("{}\n", keyward_tests::broker::TEST_KEK)).expect("write kek");
        std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    }
    let rendered = std::fs::read_to_string(configs.join(format!("{case}.toml"))).expect("rendered config");
    assert!(rendered.contains("kek_file = \"/etc/keyward/kek/kek\""), "{rendered}");
    rendered
        .replace("/etc/keyward/kek/kek", dir.join("kek").to_str().expect("utf-8"))
        .replace("/var/lib/keyward", dir.join("data").to_str().expect("utf-8"))
}

/// The keyward.toml the broker chart renders passes the real `keyward check-config` with the
/// database URL in the environment as the Secret puts it; without the URL it is refused.
#[test]
fn the_charts_broker_configuration_passes_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    for case in ["defaults", "keyward-scale"] {
        let config = dir.path().join(format!("{case}.toml"));
        std::fs::write(&config, chart_config(dir.path(), case)).expect("write config");
        let checked = Command::new(binary("keyward"))
            .arg("check-config")
            .arg(&config)
            .env("KEYWARD_DATABASE_URL", "postgres://keyward:pw@db.internal:5432/keyward")
            .output()
            .expect("keyward check-config");
        assert!(checked.status.success(), "{case}: {}", text(&checked));
        let unset = Command::new(binary("keyward"))
            .arg("check-config")
            .arg(&config)
            .env_remove("KEYWARD_DATABASE_URL")
            .output();
        let unset = unset.expect("keyward check-config");
        assert!(!unset.status.success(), "{case}: accepted without KEYWARD_DATABASE_URL: {}", text(&unset));
        assert!(text(&unset).contains("KEYWARD_DATABASE_URL"), "{case}: {}", text(&unset));
    }
}

/// The scaled chart's configuration serves on real PostgreSQL (ports moved to free ones): the
/// probes' paths answer 200 and /metrics, which the ServiceMonitor scrapes, says ready.
#[tokio::test(flavor = "multi_thread")]
async fn the_charts_broker_configuration_serves_on_postgresql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::start();
    let database_url = cluster.database("keyward");
    let (addr, agents) = (free_addr(), free_addr());
    let config = dir.path().join("keyward.toml");
    let moved = chart_config(dir.path(), "keyward-scale")
        .replace("0.0.0.0:8422", &addr.to_string())
        .replace("0.0.0.0:8443", &agents.to_string());
    std::fs::write(&config, moved).expect("write config");
    let envs = [("KEYWARD_DATABASE_URL", database_url.as_str())];
    // Waits for /readyz (the readiness probe's path) to answer 200.
    let broker = Broker::serve(&config, &dir.path().join("broker"), &format!("http://{addr}"), &envs).await;
    let health = http().get(format!("{}/healthz", broker.addr)).send().await.expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200);
    let metrics = http().get(format!("{}/metrics", broker.addr)).send().await.expect("GET /metrics");
    let metrics = metrics.text().await.expect("metrics body");
    assert!(metrics.lines().any(|line| line == "keyward_ready 1"), "{metrics}");
    broker.stop();
}
