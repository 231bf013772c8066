//! The REST API of a running processor (`leadflow run`, a child process)
//! on the real broker, on both stores: analytics equal to the ones worked
//! out from the input, keys and scopes on every route of the OpenAPI
//! document, the rate limit, problem details for bad requests, cursor
//! paging, and `POST /events` seen applied by `GET /leads/{id}`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadflow::codec::Codec;
use leadflow::config::api::Rate;
use leadflow::config::Config;
use leadflow::events::{InputEvent, LeadEvent, Stage};
use leadflow::forecast::time_to_close::{CloseCurve, Outcome};
use leadflow::store::LeadStore;

use common::expected::{expected_funnel, expected_groups, expected_stays};
use common::{committed_messages, run_cli, test_config};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_processor(config: &Config, dir: &Path) -> Child {
    let path = dir.join("leadflow.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    let log = std::fs::File::create(dir.join("processor.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("LEADFLOW_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start leadflow run")
}

fn new_key(url: &str, name: &str, scope: &str) -> String {
    let out = run_cli(url, &["apikey", "create", "--name", name, "--scope", scope]);
    let (key, err) = common::output_text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("shown once"), "{err}");
    key.trim().to_string()
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, path: &str, key: &str) -> serde_json::Value {
        let response = self.call(reqwest::Method::GET, path, Some(key), None).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Asserts a problem detail with `status`; returns its detail.
    async fn problem(&self, response: reqwest::Response, status: u16) -> String {
        assert_eq!(
            response.status().as_u16(),
            status,
            "{:?}",
            response.url().path()
        );
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(content_type, "application/problem+json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"].as_u64(), Some(status as u64), "{body}");
        assert!(body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:leadflow:problem:"));
        body["detail"].as_str().unwrap().to_string()
    }
}

/// Waits until the processor has committed `total` input messages.
async fn wait_for<S: LeadStore>(
    store: &S,
    config: &Config,
    total: i64,
    child: &mut Child,
    dir: &Path,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while committed_messages(store, config).await < total {
        let log = || std::fs::read_to_string(dir.join("processor.log")).unwrap_or_default();
        if let Some(status) = child.try_wait().unwrap() {
            panic!("processor exited ({status}):\n{}", log());
        }
        assert!(Instant::now() < deadline, "no progress:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each documented route with its path parameters filled in.
fn documented_routes(document: &serde_json::Value) -> Vec<(reqwest::Method, String)> {
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        let path = path
            .strip_prefix("/api/v1")
            .unwrap()
            .replace("{id}", "L-1")
            .replace("{version}", "1");
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_uppercase().parse().unwrap(), path.clone()));
        }
    }
    routes
}

async fn serves_the_processors_leads_with_keys_scopes_and_limits<S: LeadStore>(
    store: Arc<S>,
    url: &str,
) {
    let mut config = test_config(url);
    let port = free_port();
    config.http.listen = format!("127.0.0.1:{port}");
    config.api.rate_limits.write = Rate {
        per_second: 0.5,
        burst: 7,
    };
    let events = common::publish_simulated(&config, 31, 400, 45).await;
    let read = new_key(url, "dashboard", "read");
    let write = new_key(url, "crm-sync", "write");
    let admin = new_key(url, "ops", "admin");
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_processor(&config, dir.path());
    wait_for(
        store.as_ref(),
        &config,
        events.len() as i64,
        &mut child,
        dir.path(),
    )
    .await;
    let api = Api {
        base: format!("http://127.0.0.1:{port}/api/v1"),
        http: reqwest::Client::new(),
    };

    // The document is open and OpenAPI 3.1; every route it lists needs a
    // key, and the admin and write routes refuse a read key.
    let document: serde_json::Value = api
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let routes = documented_routes(&document);
    assert!(routes.len() >= 19, "{routes:?}");
    for (method, path) in &routes {
        let response = api.call(method.clone(), path, None, None).await;
        let detail = api.problem(response, 401).await;
        assert!(detail.contains("API key"), "{method} {path}: {detail}");
        let needs = match (method.as_str(), path.as_str()) {
            ("POST", "/events") => Some("write"),
            ("POST", _) | ("DELETE", _) => Some("admin"),
            ("GET", p) if p.ends_with("/export") => Some("admin"),
            _ => None,
        };
        if let Some(scope) = needs {
            let response = api.call(method.clone(), path, Some(&read), None).await;
            let detail = api.problem(response, 403).await;
            assert!(detail.contains(&format!("scope {scope}")), "{detail}");
        }
    }
    // The secret's last hex digit changed to another one: same key id, wrong secret.
    let last = if read.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &read[..read.len() - 1]);
    assert_ne!(forged, read);
    let response = api
        .call(reqwest::Method::GET, "/leads", Some(&forged), None)
        .await;
    api.problem(response, 401).await;

    // Analytics of the stream, equal to the input's.
    let funnel = api.get("/analytics/funnel", &read).await;
    let reached: Vec<i64> = funnel["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reached"].as_i64().unwrap())
        .collect();
    let expected = expected_funnel(&events, i64::MIN, i64::MAX);
    assert_eq!((reached, funnel["lost"].as_i64().unwrap()), expected);
    assert!(expected.0[5] > 5, "{expected:?}");
    let stays = expected_stays(&events);
    for row in api
        .get("/analytics/time-in-stage", &read)
        .await
        .as_array()
        .unwrap()
    {
        let stage: Stage = row["stage"].as_str().unwrap().parse().unwrap();
        let seen = stays.get(&stage).cloned().unwrap_or_default();
        assert_eq!(row["entered"].as_u64().unwrap() as usize, seen.len());
        let left = seen.iter().filter(|o| o.outcome != Outcome::Open).count();
        assert_eq!(row["left"].as_u64().unwrap() as usize, left);
        if let Some(mean) = row["mean_days"].as_f64() {
            let expected = CloseCurve::estimate(&seen).restricted_mean_days();
            assert!(
                (mean - expected).abs() < 1e-9,
                "{stage:?}: {mean} != {expected}"
            );
        }
    }
    let (by_owner, _, _) = expected_groups(&events);
    let owners = api.get("/analytics/breakdown?by=owner", &read).await;
    let won: BTreeMap<String, u64> = owners
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["value"].as_str().unwrap().into(),
                g["won"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected_won: BTreeMap<String, u64> =
        by_owner.iter().map(|(k, t)| (k.clone(), t.1)).collect();
    assert_eq!(won, expected_won, "won per owner");
    // The daily history follows the processor's clock, after the batches.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let history = api
            .get("/analytics/history?dimension=all&metric=created", &read)
            .await;
        if history.as_array().unwrap().len() >= 40 {
            break;
        }
        assert!(Instant::now() < deadline, "{history}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The lead list: every lead once over the pages, highest score first.
    let mut seen = BTreeSet::new();
    let mut last_score = f64::INFINITY;
    let mut path = "/leads?sort=score&limit=37".to_string();
    loop {
        let page = api.get(&path, &read).await;
        for lead in page["items"].as_array().unwrap() {
            let score = lead["final_score"].as_f64().unwrap_or(-1.0);
            assert!(score <= last_score, "{score} after {last_score}");
            last_score = score;
            assert!(seen.insert(lead["lead_ext_id"].as_str().unwrap().to_string()));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/leads?sort=score&limit=37&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len() as i64, store.lead_count().await.unwrap());
    let won = api.get("/leads?stage=closed_won&limit=500", &read).await;
    assert_eq!(won["items"].as_array().unwrap().len() as i64, expected.0[5]);
    assert!(won["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["stage"] == "closed_won"));

    // Bad requests are 4xx problems that say what is wrong.
    for (path, says) in [
        ("/leads?limit=100000", "api.max_page_size"),
        ("/leads?colour=red", "colour"),
        ("/leads?stage=won", "stage"),
        ("/leads?cursor=abc", "cursor"),
        ("/analytics/breakdown?by=colour", "colour"),
        (
            "/analytics/funnel?from=2026-02-02&to=2026-02-01",
            "period is empty",
        ),
        ("/models/seven", "seven"),
    ] {
        let response = api
            .call(reqwest::Method::GET, path, Some(&read), None)
            .await;
        let detail = api.problem(response, 400).await;
        assert!(detail.contains(says), "{path}: {detail}");
    }
    let response = api
        .call(reqwest::Method::GET, "/leads/nobody", Some(&read), None)
        .await;
    api.problem(response, 404).await;
    let response = api
        .call(reqwest::Method::GET, "/nothing-here", Some(&read), None)
        .await;
    api.problem(response, 404).await;
    let post = |body: serde_json::Value| {
        let api = &api;
        let write = write.clone();
        async move {
            api.call(reqwest::Method::POST, "/events", Some(&write), Some(&body))
                .await
        }
    };
    let response = post(serde_json::json!({"type": "lead", "event": {"lead_ext_id": "X"}})).await;
    let detail = api.problem(response, 422).await;
    assert!(
        detail.contains("event_id") || detail.contains("missing"),
        "{detail}"
    );
    let response = post(serde_json::json!({"type": "gossip", "event": {}})).await;
    api.problem(response, 400).await;
    let big = serde_json::json!({"type": "lead", "event": {"pad": "x".repeat(100_000)}});
    api.problem(post(big).await, 413).await;
    let raw = api
        .http
        .post(format!("{}/events", api.base))
        .bearer_auth(&write)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    api.problem(raw, 400).await;

    // POST /events, then GET /leads/{id} sees it applied.
    let now = chrono::Utc::now().timestamp_millis();
    let lead = LeadEvent {
        owner: Some("rep-api".into()),
        ..leadflow::testing::lead_created("API-1", now)
    };
    let event: serde_json::Value =
        serde_json::from_slice(&Codec::encode_input_json(&InputEvent::Lead(lead)).unwrap())
            .unwrap();
    let response = post(serde_json::json!({"type": "lead", "event": event})).await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        accepted["topic"].as_str(),
        Some(config.topics.leads.as_str())
    );
    assert!(accepted["offset"].as_i64().unwrap() >= 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let response = api
            .call(reqwest::Method::GET, "/leads/API-1", Some(&read), None)
            .await;
        if response.status() == 200 {
            break response.json::<serde_json::Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "POST /events never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(view["owner"], "rep-api");
    assert_eq!(view["stage"], "new");
    assert!(view["score"]["final_score"].as_f64().is_some(), "{view}");
    let timeline = api.get("/leads/API-1/timeline", &read).await;
    assert_eq!(timeline[0]["kind"], "created", "{timeline}");

    // Erasure: not through POST /events with a write key, only by DELETE
    // with an admin key; the lead is then gone, its key tombstoned on the
    // scores topic, and both the request and its application audited.
    let mut erasure = event.clone();
    erasure["kind"] = "erased".into();
    erasure["event_id"] = "API-1-erase-by-write".into();
    let response = post(serde_json::json!({"type": "lead", "event": erasure})).await;
    let detail = api.problem(response, 403).await;
    assert!(detail.contains("admin"), "{detail}");
    let response = api
        .call(
            reqwest::Method::DELETE,
            "/leads/API-1?reason=ticket%2042",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(accepted["known"], true, "{accepted}");
    assert!(accepted["already_erased_at"].is_null(), "{accepted}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = api
            .call(reqwest::Method::GET, "/leads/API-1", Some(&read), None)
            .await;
        if response.status() == 410 {
            let detail = api.problem(response, 410).await;
            assert!(detail.contains("erased"), "{detail}");
            break;
        }
        assert!(Instant::now() < deadline, "the erasure was never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tombstone = store.get_lead("API-1").await.unwrap().unwrap();
    assert!(tombstone.email.is_none() && tombstone.erased_at.is_some());
    let audit = store.audit_of("API-1").await.unwrap();
    // A key is lf_<id>_<secret>.
    let admin_id = admin.split('_').nth(1).unwrap();
    let lines: Vec<(&str, &str, Option<&str>)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str(), a.reason.as_deref()))
        .collect();
    assert!(
        lines.contains(&("erase_requested", admin_id, Some("ticket 42")))
            && lines.contains(&("erased", "processor", None)),
        "{audit:?} (admin key {admin_id})"
    );
    assert!(audit
        .iter()
        .all(|a| a.event_id == accepted["event_id"].as_str().map(String::from)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tombstones = common::read_topic(&config, &config.topics.scores)
            .into_iter()
            .filter(|m| m.key.as_deref() == Some(b"API-1".as_slice()) && m.payload.is_none())
            .count();
        if tombstones == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no tombstone for API-1 on the scores topic"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `leadflow erase` on a lead of the stream; then its creation again
    // under a new event id (as a re-import would send it) is dropped.
    let created = events
        .iter()
        .find_map(|e| match e {
            InputEvent::Lead(l) => Some(l.clone()),
            _ => None,
        })
        .unwrap();
    let id = created.lead_ext_id.clone();
    assert!(store.get_lead(&id).await.unwrap().unwrap().email.is_some());
    let config_path = dir.path().join("leadflow.toml");
    let out = run_cli(
        url,
        &[
            "--config",
            config_path.to_str().unwrap(),
            "erase",
            &id,
            "--reason",
            "by cli",
        ],
    );
    let (stdout, stderr) = common::output_text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("erasure of"), "{stdout}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .get_lead(&id)
        .await
        .unwrap()
        .unwrap()
        .erased_at
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the CLI's erasure was never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reimported = LeadEvent {
        event_id: format!("{}-reimported", created.event_id),
        ..created
    };
    leadflow::kafka::publish_inputs(
        &config,
        &Codec::new(None),
        &[InputEvent::Lead(reimported)],
        leadflow::kafka::InputFormat::Avro,
        0,
    )
    .await
    .unwrap();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("leadflow_events_dropped_erased_total 1") {
            assert!(text.contains("leadflow_gdpr_erasures_total 2"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "the re-import was not dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = store.get_lead(&id).await.unwrap().unwrap();
    assert!(
        state.erased_at.is_some() && state.email.is_none(),
        "{state:?}"
    );
    let audit = store.audit_of(&id).await.unwrap();
    assert!(
        audit[0].action == "erase_requested"
            && audit[0].actor.starts_with("cli:")
            && audit[0].reason.as_deref() == Some("by cli"),
        "{audit:?}"
    );

    // Export: a live lead's document holds its contact data, consent ledger
    // and messages; an erased lead's only its tombstone; both audited.
    let live = events
        .iter()
        .filter_map(|e| match e {
            InputEvent::Lead(l) if l.lead_ext_id != id && l.email.is_some() => Some(l),
            _ => None,
        })
        .next()
        .unwrap();
    let document = api
        .get(&format!("/leads/{}/export", live.lead_ext_id), &admin)
        .await;
    assert_eq!(
        document["state"]["email"].as_str(),
        live.email.as_deref(),
        "{document}"
    );
    assert!(
        !document["state"]["consent_ledger"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{document}"
    );
    assert!(document["messages"].is_array(), "{document}");
    assert_eq!(document["audit"][0]["action"], "exported", "{document}");
    let out = run_cli(
        url,
        &["--config", config_path.to_str().unwrap(), "export", &id],
    );
    let (stdout, stderr) = common::output_text(&out);
    assert!(out.status.success(), "{stderr}");
    let erased: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(erased["state"]["erased_at"].as_i64().is_some(), "{erased}");
    assert!(erased["state"]["email"].is_null(), "{erased}");
    let actions: Vec<&str> = erased["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["erase_requested", "erased", "exported"]);
    let response = api
        .call(
            reqwest::Method::GET,
            "/leads/nobody/export",
            Some(&admin),
            None,
        )
        .await;
    api.problem(response, 404).await;

    // Over the write key's rate (burst 7, one per two seconds): 429 with
    // Retry-After, and the budget in headers.
    let mut limited = None;
    for _ in 0..8 {
        let response = api
            .call(reqwest::Method::GET, "/leads", Some(&write), None)
            .await;
        assert!(response.headers().contains_key("ratelimit-remaining"));
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the write key was never limited");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    api.problem(limited, 429).await;
    // The read key has its own budget.
    api.get("/leads?limit=1", &read).await;

    // Admin routes work with an admin key.
    let run = api
        .call(reqwest::Method::POST, "/forecasts", Some(&admin), None)
        .await;
    assert_eq!(run.status(), 201);
    let models = api.get("/models", &admin).await;
    assert!(models.as_array().unwrap().is_empty());
    let response = api
        .call(
            reqwest::Method::POST,
            "/models/9/activate",
            Some(&admin),
            None,
        )
        .await;
    api.problem(response, 404).await;

    // A revoked key is refused from then on.
    let out = run_cli(url, &["apikey", "revoke", "dashboard"]);
    assert!(out.status.success(), "{:?}", common::output_text(&out));
    let response = api
        .call(reqwest::Method::GET, "/leads", Some(&read), None)
        .await;
    let detail = api.problem(response, 401).await;
    assert!(detail.contains("revoked"), "{detail}");
    let listed = run_cli(url, &["apikey", "list"]);
    let (out, _) = common::output_text(&listed);
    assert!(
        out.contains("dashboard") && out.contains("crm-sync"),
        "{out}"
    );
    assert!(!out.contains(&read[10..]), "the list never shows a secret");

    // Every curl example of docs/API.md works as written.
    run_documented_examples(&api, &new_key(url, "docs", "admin")).await;

    // The open endpoints stay open.
    let health = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("leadflow_api_requests_total{route=\"/api/v1/leads\",status=\"200\"}"));
    assert!(metrics.contains("leadflow_api_rate_limited_total{scope=\"write\"} 1"));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The `curl` commands of docs/API.md's `sh` blocks (continuation lines
/// and quoted line breaks joined).
fn documented_curls() -> Vec<String> {
    let doc = std::fs::read_to_string("docs/API.md").unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in doc.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            text if in_sh => {
                current.push_str(text.trim_end_matches('\\'));
                current.push(' ');
                let open_quote = current.matches('\'').count() % 2 == 1;
                if !text.ends_with('\\') && !open_quote {
                    if current.trim_start().starts_with("curl ") {
                        commands.push(current.trim().to_string());
                    }
                    current.clear();
                }
            }
            _ => {}
        }
    }
    commands
}

async fn run_documented_examples(api: &Api, key: &str) {
    let commands = documented_curls();
    assert!(commands.len() >= 15, "{commands:?}");
    let run = |command: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("LEADFLOW_API", &api.base)
            .env("LEADFLOW_KEY", key)
            .output()
            .unwrap();
        let (stdout, stderr) = common::output_text(&out);
        assert!(out.status.success(), "{command}\n{stdout}{stderr}");
        stdout
    };
    // The event first: the lead examples read the lead it creates.
    let (events, others): (Vec<&String>, Vec<&String>) =
        commands.iter().partition(|c| c.contains("/events"));
    for command in events {
        let answer: serde_json::Value = serde_json::from_str(&run(command)).unwrap();
        assert!(answer["offset"].as_i64().is_some(), "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while api
        .call(reqwest::Method::GET, "/leads/DOC-1", Some(key), None)
        .await
        .status()
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the documented event was never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for command in others {
        let answer = run(command);
        serde_json::from_str::<serde_json::Value>(&answer)
            .unwrap_or_else(|e| panic!("{command}: {e}: {answer}"));
    }
}

backend_tests!(serves_the_processors_leads_with_keys_scopes_and_limits);

/// schemathesis, as `make test-venv` installs it.
fn schemathesis() -> std::path::PathBuf {
    let path = std::env::var_os("LEADFLOW_TEST_SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/leadflow/test-venv/bin/st")
        });
    assert!(
        path.exists(),
        "{} not found: `make test-venv` installs schemathesis for this test",
        path.display()
    );
    path
}

/// schemathesis generates requests from the OpenAPI document (valid ones
/// and broken ones) against a processor that holds leads: no answer is a
/// 5xx, and every answer's status, content type, headers and body are the
/// ones the document gives; the routes refuse requests without the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let db = common::TestSqlite::new();
    let store = db.store().await;
    let mut config = test_config(&db.url);
    let port = free_port();
    config.http.listen = format!("127.0.0.1:{port}");
    let unlimited = Rate {
        per_second: 100_000.0,
        burst: 100_000,
    };
    config.api.rate_limits.admin = unlimited;
    let events = common::publish_simulated(&config, 5, 150, 30).await;
    let key = new_key(&db.url, "fuzz", "admin");
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_processor(&config, dir.path());
    wait_for(&store, &config, events.len() as i64, &mut child, dir.path()).await;
    let out = Command::new(schemathesis())
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/api/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection,\
             ignored_auth",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40", "--workers", "2", "--no-color"])
        // Its report and cache go to the test's directory.
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let (stdout, stderr) = common::output_text(&out);
    let log = std::fs::read_to_string(dir.path().join("processor.log")).unwrap_or_default();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\nprocessor log (tail):\n{}",
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
