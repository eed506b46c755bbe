//! Debian's Prometheus (2.42) scraping a real 4-branch cluster: a PromQL query of the last
//! snapshot's total returns exactly the total the initiator's store holds for that snapshot;
//! `promtool check metrics` passes on a scrape; the shipped rules load, evaluate and pass their
//! unit tests (`promtool check rules`, `promtool test rules`); every query of the shipped Grafana
//! dashboard returns data. Without Prometheus the test skips with a visible message outside CI
//! and fails in CI (`CI` set), like the fault tests.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BRANCHES: usize = 4;
const INITIAL_BALANCE: u64 = 1_000_000;
const ARGS: &[&str] = &[
    "--transfer-interval",
    "1ms..3ms",
    "--snapshot-interval",
    "300ms",
    "--initial-balance",
    "1000000",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/deploy")
}

/// Whether Debian's `prometheus` and `promtool` run here (skip outside CI, fail in CI).
fn prometheus_available(test: &str) -> bool {
    let runs = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs("prometheus") && runs("promtool") {
        return true;
    }
    let msg =
        format!("SKIPPED {test}: needs prometheus and promtool (Debian's prometheus package)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI must run it");
    }
    eprintln!("{msg}");
    false
}

/// The Prometheus server of one test, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping `targets` every second and evaluating the shipped
    /// rules every second.
    fn start(dir: &Path, targets: &[String]) -> Prometheus {
        let port = free_ports(1)[0];
        let addr = format!("127.0.0.1:{port}");
        let rules = deploy_dir().join("snapbank-rules.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: snapbank\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/PATH?query=...`: the `data` of a successful answer.
    fn api(&self, path: &str, query: Option<&str>) -> Result<Value, String> {
        let url = match query {
            Some(q) => format!("/api/v1/{path}?query={}", url_encode(q)),
            None => format!("/api/v1/{path}"),
        };
        let (code, body) = http_get(&self.addr, &url)?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("{url}: {code} {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector.
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", Some(q))?;
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar") => Ok(vec![serde_json::json!({ "value": data["result"] })]),
            other => Err(format!("{q}: result type {other:?}")),
        }
    }

    /// Runs `q` until `pred` holds on its result; that result.
    fn query_until(
        &self,
        q: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let end = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < end {
            match self.query(q) {
                Ok(r) if pred(&r) => return r,
                Ok(r) => last = format!("{r:?}"),
                Err(e) => last = e,
            }
            sleep(250);
        }
        panic!(
            "{q} within {timeout:?}; last: {last}\nprometheus log:\n{}",
            self.log()
        );
    }
}

/// The sample value of a query result element, exactly as Prometheus printed it.
fn value_text(sample: &Value) -> String {
    sample["value"][1].as_str().unwrap_or_default().to_string()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a tool, returning whether it succeeded and its output.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run tool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The must-show of the operators' issue: Prometheus sees exactly the store's total.
#[test]
fn prometheus_scrapes_the_exact_total_of_the_last_snapshot() {
    if !prometheus_available("prometheus_scrapes_the_exact_total_of_the_last_snapshot") {
        return;
    }
    let mut c = Cluster::new(BRANCHES, ARGS);
    let at = metrics_addrs(&c, BRANCHES);
    for (i, a) in at.iter().enumerate() {
        start_with_metrics(&mut c, i, a);
    }
    let dir = Dir::temp().expect("tempdir");
    let prom = Prometheus::start(dir.path(), &at);
    prom.query_until(
        "count(up{job=\"snapbank\"} == 1)",
        Duration::from_secs(60),
        |r| r.first().map(value_text).as_deref() == Some("4"),
    );

    // A few snapshots completed, as Prometheus saw them.
    let last = prom.query_until(
        "snapbank_snapshot_last_id{job=\"snapbank\"}",
        Duration::from_secs(60),
        |r| r.len() == 1 && value_text(&r[0]).parse::<u64>().unwrap_or(0) >= 3,
    );
    assert_eq!(last[0]["metric"]["branch"], c.addr(0), "only the initiator");
    // The total and the id in one query, so both come from the same scrape.
    let q = "snapbank_snapshot_last_money{job=\"snapbank\"} + on(branch) group_left() (0 * snapbank_snapshot_last_id{job=\"snapbank\"})";
    let total = prom.query(q).expect("total");
    assert_eq!(total.len(), 1, "{total:?}");
    let expected_total = (INITIAL_BALANCE * BRANCHES as u64).to_string();
    assert_eq!(value_text(&total[0]), expected_total, "{total:?}");
    let expected = prom
        .query("snapbank_snapshot_last_expected_money{job=\"snapbank\"}")
        .expect("expected");
    assert_eq!(expected.len(), 1, "{expected:?}");
    assert_eq!(value_text(&expected[0]), expected_total);
    let diff = prom
        .query("sum(snapbank_snapshot_last_money) - sum(snapbank_snapshot_last_expected_money)")
        .expect("diff");
    assert_eq!(value_text(&diff[0]), "0");
    let seen_id: u64 = value_text(&last[0]).parse().expect("id");

    // The shipped rules loaded and evaluate without errors; no alert fires on a healthy bank.
    prom.query_until(
        "snapbank:transfers_sent:rate1m",
        Duration::from_secs(60),
        |r| r.len() == BRANCHES,
    );
    let rules = prom.api("rules", None).expect("rules");
    let groups = rules["groups"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 3, "{rules:#}");
    for g in &groups {
        for r in g["rules"].as_array().into_iter().flatten() {
            assert_eq!(r["health"], "ok", "{r:#}");
        }
    }
    let firing = prom.query("ALERTS{alertstate=\"firing\"}").expect("alerts");
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy cluster: {firing:?}"
    );

    // Every query of the dashboard returns data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    exprs.extend(
        dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["definition"].as_str())
            .filter_map(|d| {
                let inner = d.strip_prefix("label_values(")?.strip_suffix(')')?;
                Some(inner.rsplit_once(',')?.0.to_string())
            }),
    );
    for e in &exprs {
        let q = e
            .replace("$branch", ".*")
            .replace("$__rate_interval", "10s");
        prom.query_until(&q, Duration::from_secs(30), |r| !r.is_empty());
    }

    // promtool's lint of a real scrape of each kind of branch.
    for a in [&at[0], &at[1]] {
        let (code, body) = http_get(a, "/metrics").expect("scrape");
        assert_eq!(code, 200);
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(body.as_bytes()).expect("write scrape");
        }
        let out = child.wait_with_output().expect("promtool check metrics");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics on {a}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The store agrees: snapshot `seen_id`'s parts add up to what Prometheus showed.
    c.stop_all();
    let out = c.snapctl(&["snapshots", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("snapshots JSON");
    let snap = doc["completed"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"].as_u64() == Some(seen_id))
        .unwrap_or_else(|| panic!("snapshot {seen_id} kept in the store: {doc:#}"));
    let from_parts: u64 = snap["branches"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["balance"].as_u64().unwrap_or(0) + b["channel_money"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(from_parts.to_string(), expected_total, "{snap:#}");
    let (code, audit) = c.audit();
    assert_eq!(code, 0, "{audit:#}");
}

/// The shipped rules pass promtool's syntax check and their own unit tests (the alerts fire on
/// a sick cluster's series and not on a healthy one's).
#[test]
fn shipped_rules_pass_promtool() {
    if !prometheus_available("shipped_rules_pass_promtool") {
        return;
    }
    let dir = deploy_dir();
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("snapbank-rules.yml")));
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules", "snapbank-rules.test.yml"])
        .current_dir(&dir));
    assert!(ok && out.contains("SUCCESS"), "{out}");
}
