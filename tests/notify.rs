//! The delivery worker against the real broker and both stores, with local
//! HTTP servers that check each request as SendGrid and Twilio document it
//! and answer as they do: 202/201, 429 with Retry-After, 500, 400 with the
//! provider's error body, and a connection that hangs.
//!
//! One file past 600 lines on purpose: the provider stand-ins (about 250
//! lines) are shared by every worker test, which one test binary keeps together.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use common::*;
use leadflow::codec::Codec;
use leadflow::config::Config;
use leadflow::core::state::{ChannelConsent, LeadState};
use leadflow::events::{Channel, DeliveryEvent, DeliveryStatus, OutboundMessage};
use leadflow::metrics::Metrics;
use leadflow::notify::worker::{NotifyError, NotifyWorker};
use leadflow::store::{BatchWrite, LeadStore, LeadWrite, StoreError};
use leadflow::testing::{consent, interaction, lead_created, outbound_message};

const API_KEY: &str = "SG.test-key";
const SID: &str = "AC0123456789";
const TOKEN: &str = "twilio-token";
const FROM: &str = "+15550000000";

/// One request as the fake provider saw it.
#[derive(Debug, Clone)]
struct Seen {
    provider: &'static str,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// The message_id it carried (SendGrid's custom arg; Twilio: the To).
    key: String,
    at: Instant,
    accepted: bool,
}

#[derive(Default)]
struct Provider {
    seen: Vec<Seen>,
    /// While set, every new request gets a 503 (and is not accepted).
    refusing: bool,
    /// Requests between their arrival and their answer.
    answering: usize,
    /// Delay before each answer.
    latency: Duration,
}

type Fake = Arc<Mutex<Provider>>;

fn attempts_so_far(p: &Provider, key: &str) -> usize {
    p.seen.iter().filter(|s| s.key == key).count()
}

/// What the fake answers, chosen by the recipient (the local part of the
/// address, or the phone number's last digits) and the attempt number.
fn script(recipient: &str, attempt: usize) -> &'static str {
    match (recipient, attempt) {
        (r, 1) if r.starts_with("limited") => "429",
        (r, 1) if r.starts_with("flaky") => "500",
        (r, 1) if r.starts_with("hang") => "hang",
        (r, _) if r.starts_with("bad-address") => "400-address",
        (r, _) if r.starts_with("bad-template") => "400-template",
        (r, _) if r.ends_with("9999") => "400-twilio",
        _ => "ok",
    }
}

async fn answer(
    fake: Fake,
    provider: &'static str,
    path: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (key, recipient) = match provider {
        "sendgrid" => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let p = &v["personalizations"][0];
            (
                p["custom_args"]["message_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                p["to"][0]["email"].as_str().unwrap_or("").to_string(),
            )
        }
        _ => {
            let form: HashMap<String, String> = serde_urlencoded_pairs(&body);
            let to = form.get("To").cloned().unwrap_or_default();
            (to.clone(), to)
        }
    };
    let (attempt, latency) = {
        let mut p = fake.lock().unwrap();
        let attempt = attempts_so_far(&p, &key) + 1;
        let refusing = p.refusing;
        p.seen.push(Seen {
            provider,
            path,
            headers,
            body,
            key: key.clone(),
            at: Instant::now(),
            accepted: false,
        });
        if refusing {
            return (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
        }
        p.answering += 1;
        (attempt, p.latency)
    };
    tokio::time::sleep(latency).await;
    let behaviour = script(&recipient, attempt);
    if behaviour == "hang" {
        // Longer than the worker's request timeout: the client gives up.
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let mut p = fake.lock().unwrap();
    p.answering -= 1;
    let response = match (provider, behaviour) {
        ("sendgrid", "ok") => (
            StatusCode::ACCEPTED,
            [("x-message-id", format!("sg-{key}"))],
            "",
        )
            .into_response(),
        ("twilio", "ok") => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({"sid": format!("SM{}", p.seen.len()), "status": "queued"})),
        )
            .into_response(),
        (_, "429") => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            r#"{"errors":[{"message":"too many requests"}]}"#,
        )
            .into_response(),
        (_, "400-address") => (
            StatusCode::BAD_REQUEST,
            r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email","help":"http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.personalizations.to"}]}"#,
        )
            .into_response(),
        (_, "400-template") => (
            StatusCode::BAD_REQUEST,
            r#"{"errors":[{"message":"The template_id must be a valid GUID, you provided 'd-missing'.","field":"template_id","help":null}]}"#,
        )
            .into_response(),
        (_, "400-twilio") => (
            StatusCode::BAD_REQUEST,
            r#"{"code": 21211, "message": "The 'To' number +15559999 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        )
            .into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    };
    if response.status().is_success() {
        if let Some(s) = p.seen.iter_mut().rev().find(|s| s.key == key) {
            s.accepted = true;
        }
    }
    response
}

fn serde_urlencoded_pairs(body: &[u8]) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(body)))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn start_fake() -> (Fake, String) {
    let fake: Fake = Arc::default();
    let app = Router::new()
        .route(
            "/v3/mail/send",
            post(
                |State(f): State<Fake>, headers: HeaderMap, body: Bytes| async move {
                    answer(f, "sendgrid", "/v3/mail/send".into(), headers, body).await
                },
            ),
        )
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(
                |State(f): State<Fake>,
                 axum::extract::Path(sid): axum::extract::Path<String>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let path = format!("/2010-04-01/Accounts/{sid}/Messages.json");
                    answer(f, "twilio", path, headers, body).await
                },
            ),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}"))
}

/// A fake provider, a worker configuration that calls it, and the topics.
async fn fake_provider_and_topics(database_url: &str) -> (Fake, Config) {
    let (fake, provider_url) = start_fake().await;
    let config = notify_config(database_url, &provider_url);
    leadflow::kafka::create_topics(&config).await.unwrap();
    (fake, config)
}

fn notify_config(database_url: &str, provider_url: &str) -> Config {
    let mut config = test_config(database_url);
    let n = &mut config.notify;
    n.group_id = format!("{}-notify", config.kafka.group_id);
    n.http_listen = "127.0.0.1:0".into();
    n.request_timeout_ms = 1_000;
    n.claim_lease_ms = 3_000;
    n.retry.initial_backoff_ms = 50;
    n.retry.max_backoff_ms = 400;
    n.retry.max_attempts = 4;
    n.sendgrid.base_url = provider_url.into();
    n.sendgrid.api_key = API_KEY.into();
    n.sendgrid.from_email = "hello@leadflow.test".into();
    n.sendgrid.from_name = "Leadflow".into();
    n.sendgrid.rate_per_second = 1_000;
    n.sendgrid.templates = BTreeMap::from([
        ("premium_welcome".to_string(), "d-welcome".to_string()),
        ("premium_value_prop".to_string(), "d-value".to_string()),
    ]);
    n.twilio.base_url = provider_url.into();
    n.twilio.account_sid = SID.into();
    n.twilio.auth_token = TOKEN.into();
    n.twilio.from = FROM.into();
    n.twilio.rate_per_second = 1_000;
    n.check().unwrap();
    config
}

/// Leads with consent on both channels (and one without SMS consent).
async fn store_leads<S: LeadStore>(store: &S, config: &Config, leads: &[(&str, &str, &str, bool)]) {
    let states: Vec<LeadState> = leads
        .iter()
        .map(|(id, email, phone, sms_consent)| {
            let mut s = LeadState::new(id);
            s.email = Some(email.to_string());
            s.phone = Some(phone.to_string());
            let granted = |g: bool| ChannelConsent {
                granted: g,
                recorded_at: 1,
                source: "web_form".into(),
            };
            s.consent.email = Some(granted(true));
            s.consent.sms = sms_consent.then(|| granted(true));
            s
        })
        .collect();
    store
        .commit_batch(&BatchWrite {
            consumer_group: &config.kafka.group_id,
            leads: states.iter().map(|s| LeadWrite::new(s, 0)).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn message(lead: &str, channel: Channel, to: &str, template: &str) -> OutboundMessage {
    OutboundMessage {
        message_id: leadflow::core::ids::message_id(lead, "premium", template, 0),
        data: BTreeMap::from([
            ("first_name".to_string(), "Ana".to_string()),
            ("company".to_string(), "Acme".to_string()),
            ("lead_ext_id".to_string(), lead.to_string()),
        ]),
        sequence: "premium".into(),
        scheduled_for: 1_767_225_600_000,
        created_at: 1_767_225_600_000,
        ..outbound_message(lead, channel, to, template)
    }
}

async fn publish(config: &Config, messages: &[OutboundMessage]) {
    let codec = Codec::new(None);
    for m in messages {
        let payload = codec.encode(&config.topics.outbound, m).await.unwrap();
        produce(
            config,
            &config.topics.outbound,
            Some(&m.lead_ext_id),
            &payload,
        )
        .await;
    }
}

async fn deliveries(config: &Config) -> Vec<DeliveryEvent> {
    let codec = Codec::new(None);
    let mut out = Vec::new();
    for m in read_topic(config, &config.topics.deliveries) {
        let event: DeliveryEvent = codec.decode(&m.payload.unwrap()).await.unwrap();
        assert_eq!(m.key.as_deref(), Some(event.lead_ext_id.as_bytes()));
        out.push(event);
    }
    out
}

async fn providers_are_called_as_documented_and_their_answers_honoured<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let (fake, config) = fake_provider_and_topics(url).await;
    store_leads(
        store.as_ref(),
        &config,
        &[
            ("L-OK", "ana@example.com", "+15550001", true),
            ("L-SMS", "sms@example.com", "+15550002", true),
            ("L-429", "limited@example.com", "+15550003", true),
            ("L-500", "flaky@example.com", "+15550004", true),
            ("L-HANG", "hang@example.com", "+15550005", true),
            ("L-BAD", "bad-address@example", "+15550006", true),
            ("L-TPL", "bad-template@example.com", "+15550007", true),
            ("L-NOSMS", "nosms@example.com", "+15550008", false),
            ("L-BADNUM", "badnum@example.com", "+15559999", true),
        ],
    )
    .await;
    // L-GONE was erased after its message was published: only its
    // tombstone is left.
    let mut gone = LeadState::new("L-GONE");
    gone.email = Some("gone@example.com".into());
    let gone = gone.tombstone(2);
    store
        .commit_batch(&BatchWrite {
            consumer_group: &config.kafka.group_id,
            leads: vec![LeadWrite::new(&gone, 0)],
            ..Default::default()
        })
        .await
        .unwrap();
    let ok = message("L-OK", Channel::Email, "ana@example.com", "premium_welcome");
    let sms = message("L-SMS", Channel::Sms, "+15550002", "high_priority_followup");
    let limited = message(
        "L-429",
        Channel::Email,
        "limited@example.com",
        "premium_welcome",
    );
    let flaky = message(
        "L-500",
        Channel::Email,
        "flaky@example.com",
        "premium_welcome",
    );
    let hang = message(
        "L-HANG",
        Channel::Email,
        "hang@example.com",
        "premium_welcome",
    );
    let bad = message(
        "L-BAD",
        Channel::Email,
        "bad-address@example",
        "premium_welcome",
    );
    let tpl = message(
        "L-TPL",
        Channel::Email,
        "bad-template@example.com",
        "premium_welcome",
    );
    let unmapped = message(
        "L-OK",
        Channel::Email,
        "ana@example.com",
        "no_such_template",
    );
    let no_consent = message(
        "L-NOSMS",
        Channel::Sms,
        "+15550008",
        "high_priority_followup",
    );
    let erased = message(
        "L-GONE",
        Channel::Email,
        "gone@example.com",
        "premium_welcome",
    );
    let bad_number = message(
        "L-BADNUM",
        Channel::Sms,
        "+15559999",
        "high_priority_followup",
    );
    let mut all = vec![
        ok.clone(),
        sms.clone(),
        limited.clone(),
        flaky.clone(),
        hang.clone(),
        bad.clone(),
        tpl.clone(),
        unmapped.clone(),
        no_consent.clone(),
        erased.clone(),
        bad_number.clone(),
    ];
    // The same message_id again (an outbox relay repeat): sent once.
    all.push(ok.clone());
    publish(&config, &all).await;
    produce(
        &config,
        &config.topics.outbound,
        Some("L-OK"),
        b"not a message",
    )
    .await;

    let metrics = Arc::new(Metrics::new());
    let worker = NotifyWorker::new(
        config.clone(),
        store.clone(),
        Arc::new(Codec::new(None)),
        metrics.clone(),
    )
    .unwrap();
    let summary = worker
        .run(Some(Duration::from_secs(6)), std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.consumed, 13, "{summary:?}");

    let seen = fake.lock().unwrap().seen.clone();
    let of = |m: &OutboundMessage| -> Vec<Seen> {
        seen.iter()
            .filter(|s| s.key == m.message_id || (s.provider == "twilio" && s.key == m.to))
            .cloned()
            .collect()
    };

    // SendGrid v3 mail/send, exactly as documented.
    let reqs = of(&ok);
    assert_eq!(reqs.len(), 1, "one request for a message published twice");
    let r = &reqs[0];
    assert_eq!(r.path, "/v3/mail/send");
    assert_eq!(
        r.headers["authorization"],
        format!("Bearer {API_KEY}").as_str()
    );
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["template_id"], "d-welcome");
    assert_eq!(body["from"]["email"], "hello@leadflow.test");
    assert_eq!(body["from"]["name"], "Leadflow");
    let p = &body["personalizations"][0];
    assert_eq!(p["to"][0]["email"], "ana@example.com");
    assert_eq!(p["to"][0]["name"], "Ana");
    assert_eq!(p["dynamic_template_data"]["first_name"], "Ana");
    assert_eq!(p["dynamic_template_data"]["company"], "Acme");
    assert_eq!(p["dynamic_template_data"]["lead_ext_id"], "L-OK");
    assert_eq!(p["custom_args"]["message_id"], ok.message_id.as_str());

    // Twilio Messages: form-encoded, basic auth with the account SID.
    let reqs = of(&sms);
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, format!("/2010-04-01/Accounts/{SID}/Messages.json"));
    use base64_check::encode as b64;
    assert_eq!(
        r.headers["authorization"],
        format!("Basic {}", b64(&format!("{SID}:{TOKEN}"))).as_str()
    );
    assert_eq!(
        r.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form = serde_urlencoded_pairs(&r.body);
    assert_eq!(form["To"], "+15550002");
    assert_eq!(form["From"], FROM);
    assert!(form["Body"].starts_with("Hi Ana, "), "{}", form["Body"]);

    // 429 with Retry-After: 1 — the retry waits at least that long.
    let reqs = of(&limited);
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    // 500 and a hanging connection: retried, then accepted.
    assert_eq!(of(&flaky).len(), 2);
    assert_eq!(of(&hang).len(), 2);
    // A 400 that will never succeed: one request, no retry.
    assert_eq!(of(&bad).len(), 1);
    assert_eq!(of(&tpl).len(), 1);
    assert_eq!(of(&bad_number).len(), 1);
    // Dropped before any request: no template id, no consent, erased lead.
    assert!(of(&unmapped).is_empty());
    assert!(of(&no_consent).is_empty());
    assert!(of(&erased).is_empty());

    let events = deliveries(&config).await;
    let status = |m: &OutboundMessage| -> Vec<(DeliveryStatus, Option<String>, Option<String>)> {
        events
            .iter()
            .filter(|e| e.message_id == m.message_id)
            .map(|e| (e.status, e.provider_message_id.clone(), e.reason.clone()))
            .collect()
    };
    assert_eq!(
        status(&ok),
        vec![(
            DeliveryStatus::Sent,
            Some(format!("sg-{}", ok.message_id)),
            None
        )]
    );
    assert_eq!(status(&sms).len(), 1);
    assert_eq!(status(&sms)[0].0, DeliveryStatus::Sent);
    assert!(status(&sms)[0].1.as_deref().unwrap().starts_with("SM"));
    for m in [&limited, &flaky, &hang] {
        assert_eq!(status(m).len(), 1, "{}", m.to);
        assert_eq!(status(m)[0].0, DeliveryStatus::Sent, "{}", m.to);
    }
    let bounced = status(&bad);
    assert_eq!(bounced[0].0, DeliveryStatus::Bounced);
    assert!(bounced[0]
        .2
        .as_deref()
        .unwrap()
        .contains("Does not contain a valid address"));
    assert_eq!(status(&bad_number)[0].0, DeliveryStatus::Bounced);
    assert!(status(&bad_number)[0]
        .2
        .as_deref()
        .unwrap()
        .contains("21211"));
    let failed = status(&tpl);
    assert_eq!(failed[0].0, DeliveryStatus::Failed);
    assert!(failed[0]
        .2
        .as_deref()
        .unwrap()
        .contains("template_id must be a valid GUID"));
    assert!(status(&unmapped)[0]
        .2
        .as_deref()
        .unwrap()
        .contains("no SendGrid template id for `no_such_template`"));
    assert_eq!(
        status(&no_consent)[0].2.as_deref(),
        Some("dropped: no sms consent on record")
    );
    assert_eq!(
        status(&erased)[0].2.as_deref(),
        Some("dropped: lead erased (GDPR)")
    );
    // Every DeliveryEvent id is deterministic: one per message and outcome.
    let ids: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len());
    assert_eq!(events.len(), 11, "one report per distinct message");

    // Dead letters: the four rejections, the unmapped template and the garbage.
    let dead = read_dead_letters(&config);
    let kinds: Vec<&str> = dead.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "delivery_failed").count(),
        4,
        "{dead:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "invalid_message").count(),
        1,
        "{dead:?}"
    );

    assert_eq!(metrics.value("leadflow_notify_dedupe_hits_total", &[]), 1.0);
    let retries = metrics.value(
        "leadflow_notify_retries_total",
        &[("channel", "email"), ("template", "premium_welcome")],
    );
    assert_eq!(retries, 3.0, "429, 500 and the hang were retried once each");
    let rendered = metrics.render();
    assert!(rendered.contains("leadflow_notify_provider_request_seconds_bucket"));
    assert!(rendered.contains(r#"leadflow_notify_messages_total{channel="email",outcome="bounced",template="premium_welcome"} 1"#), "{rendered}");
}

backend_tests!(providers_are_called_as_documented_and_their_answers_honoured);

/// Standard base64 for the expected Authorization header, written out so
/// the test does not trust the client's own encoder.
mod base64_check {
    pub fn encode(s: &str) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = (chunk[0] as u32) << 16
                | (*chunk.get(1).unwrap_or(&0) as u32) << 8
                | *chunk.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn matches_rfc_4648() {
        assert_eq!(encode("foobar"), "Zm9vYmFy");
        assert_eq!(encode("fooba"), "Zm9vYmE=");
        assert_eq!(encode("foob"), "Zm9vYg==");
    }
}

/// A store error that is no outage (here a lead whose stored state does not
/// decode) stops the worker with that error instead of retrying it
/// forever: nothing is sent for the message and no commit passes it. Once
/// the row is repaired, the next run picks the message up again and sends
/// it, once.
async fn a_store_defect_stops_the_worker_without_losing_the_message<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let (fake, mut config) = fake_provider_and_topics(url).await;
    // The second run takes over the stopped run's claim once it lapses.
    config.notify.claim_lease_ms = 1_000;
    let leads = [
        ("L-OK", "ana@example.com", "+15550001", true),
        ("L-DAMAGED", "damaged@example.com", "+15550002", true),
    ];
    store_leads(store.as_ref(), &config, &leads).await;
    execute_sql(
        url,
        "UPDATE leads SET state = '{not json' WHERE lead_ext_id = 'L-DAMAGED'",
    )
    .await;
    let ok = message("L-OK", Channel::Email, "ana@example.com", "premium_welcome");
    let damaged = message(
        "L-DAMAGED",
        Channel::Email,
        "damaged@example.com",
        "premium_welcome",
    );
    publish(&config, &[ok.clone(), damaged.clone()]).await;
    let worker = || {
        NotifyWorker::new(
            config.clone(),
            store.clone(),
            Arc::new(Codec::new(None)),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    };
    let accepted = |m: &OutboundMessage| {
        fake.lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.key == m.message_id && s.accepted)
            .count()
    };

    // Bounded so that a worker retrying the defect forever fails the test
    // instead of hanging it.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        worker().run(Some(Duration::from_secs(6)), std::future::pending()),
    )
    .await
    .expect("the worker stops on a store defect")
    .unwrap_err();
    assert!(
        matches!(&err, NotifyError::Store(StoreError::Corrupt { lead, .. }) if lead == "L-DAMAGED"),
        "{err}"
    );
    assert_eq!(accepted(&damaged), 0, "nothing sent for the damaged lead");

    store_leads(store.as_ref(), &config, &leads[1..]).await;
    worker()
        .run(Some(Duration::from_secs(6)), std::future::pending())
        .await
        .unwrap();
    assert_eq!(accepted(&damaged), 1, "sent once after the repair");
    assert_eq!(accepted(&ok), 1, "the healthy lead's message sent once");
    let reports: Vec<_> = deliveries(&config)
        .await
        .into_iter()
        .filter(|d| d.message_id == damaged.message_id)
        .map(|d| d.status)
        .collect();
    assert_eq!(reports, [DeliveryStatus::Sent]);
}

backend_tests!(a_store_defect_stops_the_worker_without_losing_the_message);

/// SIGKILL the worker process mid-stream, several times: every message is
/// accepted by the provider exactly once. Each kill happens outside the
/// documented window (provider accepted, outcome not yet recorded): the
/// fake provider stops accepting, and the test waits until every accepted
/// message is recorded before it kills.
async fn sigkill_mid_stream_sends_every_message_once<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    const MESSAGES: usize = 300;
    let (fake, provider_url) = start_fake().await;
    fake.lock().unwrap().latency = Duration::from_millis(10);
    let mut config = notify_config(url, &provider_url);
    // Refusals while the test holds the provider must not exhaust retries.
    config.notify.retry.max_attempts = 1_000;
    config.notify.sendgrid.rate_per_second = 150;
    leadflow::kafka::create_topics(&config).await.unwrap();
    let leads: Vec<(String, String)> = (0..MESSAGES)
        .map(|i| (format!("K-{i:04}"), format!("lead{i}@example.com")))
        .collect();
    let rows: Vec<(&str, &str, &str, bool)> = leads
        .iter()
        .map(|(id, email)| (id.as_str(), email.as_str(), "+15550100", true))
        .collect();
    store_leads(store.as_ref(), &config, &rows).await;
    let messages: Vec<OutboundMessage> = leads
        .iter()
        .map(|(id, email)| message(id, Channel::Email, email, "premium_welcome"))
        .collect();
    publish(&config, &messages).await;

    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("leadflow.toml");
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    let spawn = |idle: Option<u64>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_leadflow"));
        cmd.arg("-c").arg(&config_file).arg("notify");
        if let Some(idle) = idle {
            cmd.arg("--exit-when-idle").arg(idle.to_string());
        }
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
            .spawn()
            .unwrap()
    };
    let accepted = |fake: &Fake| -> BTreeSet<String> {
        let p = fake.lock().unwrap();
        p.seen
            .iter()
            .filter(|s| s.accepted)
            .map(|s| s.key.clone())
            .collect()
    };

    for round in 1..=3 {
        let mut child = spawn(None);
        let target = round * MESSAGES / 4;
        let deadline = Instant::now() + Duration::from_secs(90);
        while accepted(&fake).len() < target {
            assert!(
                Instant::now() < deadline,
                "round {round}: stuck at {} accepted",
                accepted(&fake).len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Close the window: no new acceptances, none being answered, and
        // every accepted message recorded.
        fake.lock().unwrap().refusing = true;
        while fake.lock().unwrap().answering > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for id in accepted(&fake) {
            loop {
                let record = store.delivery_record(&id).await.unwrap();
                if record.is_some_and(|r| r.status == "sent") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        fake.lock().unwrap().refusing = false;
    }
    let mut child = spawn(Some(10));
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the last worker failed");
            break;
        }
        assert!(Instant::now() < deadline, "the last worker did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let seen = fake.lock().unwrap().seen.clone();
    let mut accepted_per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.accepted) {
        *accepted_per_id.entry(s.key.as_str()).or_default() += 1;
    }
    let expected: BTreeSet<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(
        accepted_per_id.keys().copied().collect::<BTreeSet<_>>(),
        expected
    );
    let repeated: Vec<_> = accepted_per_id.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "accepted more than once: {repeated:?}");
    let sent: BTreeSet<String> = deliveries(&config)
        .await
        .into_iter()
        .filter(|e| e.status == DeliveryStatus::Sent)
        .map(|e| e.message_id)
        .collect();
    assert_eq!(sent.len(), MESSAGES, "a Sent report for every message");
    // Refused requests (503 while the test held the provider) were retried:
    // the kills really fell mid-stream.
    assert!(
        seen.iter().any(|s| !s.accepted),
        "no request was ever refused"
    );
}

backend_tests!(sigkill_mid_stream_sends_every_message_once);

/// The whole loop: the processor fires a nurturing step, the worker sends
/// it, and its DeliveryEvent comes back to the processor and updates the lead.
/// A SendGrid template id for every email template of the built-in sequences.
fn map_every_email_template(config: &mut Config) {
    for template in [
        "premium_welcome",
        "premium_value_prop",
        "premium_case_study",
        "premium_demo_request",
        "high_priority_welcome",
        "high_priority_benefits",
        "standard_welcome",
        "standard_product_overview",
        "standard_customer_story",
        "standard_checkin",
        "low_welcome",
        "low_newsletter",
        "reactivation_checkin",
        "reactivation_last_chance",
    ] {
        config
            .notify
            .sendgrid
            .templates
            .insert(template.into(), format!("d-{template}"));
    }
}

async fn a_processor_message_is_sent_and_its_delivery_reaches_the_lead<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    use leadflow::events::{Consent, InputEvent, InteractionEvent, InteractionKind, LeadEvent};
    const DAY: i64 = 86_400_000;
    let now = leadflow::core::clock::wall_clock_millis();
    let t0 = now - 3 * DAY;
    let (fake, provider_url) = start_fake().await;
    let mut config = notify_config(url, &provider_url);
    map_every_email_template(&mut config);
    leadflow::kafka::create_topics(&config).await.unwrap();
    let lead = "E2E-1";
    let events = vec![
        InputEvent::Lead(LeadEvent {
            event_id: "e2e-created".into(),
            email: Some("e2e@example.com".into()),
            first_name: Some("Eva".into()),
            company: Some("Acme".into()),
            owner: Some("rep-1".into()),
            estimated_value: Some(50_000.0),
            probability: Some(0.5),
            initial_score: Some(90.0),
            consent: Some(Consent {
                sms: None,
                ..consent(true, true, t0)
            }),
            ..lead_created(lead, t0)
        }),
        // A minute ago: the partition's event-time clock passes the day-1
        // step (a web visit neither pauses nor counts as contact).
        InputEvent::Interaction(InteractionEvent {
            event_id: "e2e-visit".into(),
            ..interaction(lead, 0, InteractionKind::WebVisit, now - 60_000, "web")
        }),
    ];
    leadflow::kafka::publish_inputs(
        &config,
        &Codec::new(None),
        &events,
        leadflow::kafka::InputFormat::Avro,
        0,
    )
    .await
    .unwrap();

    let (pipeline, _) = spawn_pipeline(&config, store.clone(), Duration::from_secs(12));
    let worker = NotifyWorker::new(
        config.clone(),
        store.clone(),
        Arc::new(Codec::new(None)),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let summary = worker
        .run(Some(Duration::from_secs(10)), std::future::pending())
        .await
        .unwrap();
    pipeline.await.unwrap().unwrap();

    // The worker stamps its reports with the wall clock, which moves the
    // processor's event-time clock to now: the lead's events are recent.
    assert_eq!(summary.failed, 0, "{:?}", read_dead_letters(&config));
    assert!(summary.sent >= 1, "{summary:?}");
    let seen = fake.lock().unwrap().seen.clone();
    assert_eq!(seen.len() as u64, summary.sent);
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    let p = &body["personalizations"][0];
    assert_eq!(p["to"][0]["email"], "e2e@example.com");
    assert_eq!(p["dynamic_template_data"]["first_name"], "Eva");
    assert!(
        body["template_id"].as_str().unwrap().ends_with("_welcome"),
        "{body}"
    );
    let state = store.get_lead(lead).await.unwrap().unwrap();
    assert!(
        state.nurture.last_delivered_at.is_some(),
        "the processor applied the worker's DeliveryEvent: {:?}",
        state.nurture
    );
}

backend_tests!(a_processor_message_is_sent_and_its_delivery_reaches_the_lead);

/// Hostile outbound messages (NUL characters, oversize fields, a value just
/// under the input limit whose dead letter is too large for the producer, a
/// megabyte key, a truncated record) are dead-lettered with their reason;
/// the worker keeps running, sends the good message once, and sends nothing
/// for the others.
async fn hostile_messages_never_stall_or_crash_the_worker<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    let (fake, config) = fake_provider_and_topics(url).await;
    store_leads(
        store.as_ref(),
        &config,
        &[("L-GOOD", "ana@example.com", "+15550001", true)],
    )
    .await;
    let good = message(
        "L-GOOD",
        Channel::Email,
        "ana@example.com",
        "premium_welcome",
    );
    let hostile: Vec<(&str, OutboundMessage)> = vec![
        (
            "nul in message_id",
            OutboundMessage {
                message_id: "m\0x".into(),
                ..good.clone()
            },
        ),
        (
            "nul in to",
            OutboundMessage {
                message_id: "m-to".into(),
                to: "ana@\0example.com".into(),
                ..good.clone()
            },
        ),
        (
            "huge template",
            OutboundMessage {
                message_id: "m-tpl".into(),
                template: "t".repeat(5_000),
                ..good.clone()
            },
        ),
        (
            "too much data",
            OutboundMessage {
                message_id: "m-data".into(),
                data: (0..300)
                    .map(|i| (format!("k{i}"), "v".to_string()))
                    .collect(),
                ..good.clone()
            },
        ),
        (
            "long lead id",
            OutboundMessage {
                message_id: "m-id".into(),
                lead_ext_id: "L".repeat(200),
                ..good.clone()
            },
        ),
    ];
    let mut all = vec![good.clone()];
    all.extend(hostile.iter().map(|(_, m)| m.clone()));
    publish(&config, &all).await;
    let codec = Codec::new(None);
    let whole = codec.encode_single_object(&good).unwrap();
    produce(
        &config,
        &config.topics.outbound,
        Some("L-CUT"),
        &whole[..whole.len() - 3],
    )
    .await;
    let big_producer: rdkafka::producer::FutureProducer =
        leadflow::kafka::client_config(&config.kafka, &[("message.max.bytes", "4000000")])
            .create()
            .unwrap();
    let mut just_under = br#"{"message_id": ""#.to_vec();
    just_under.resize(1_010_000, b'x');
    let huge_key = "K".repeat(1_050_000);
    for (key, payload) in [("L-BIG", &just_under[..]), (huge_key.as_str(), &whole[..])] {
        big_producer
            .send(
                rdkafka::producer::FutureRecord::to(&config.topics.outbound)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let worker = NotifyWorker::new(
        config.clone(),
        store.clone(),
        Arc::new(Codec::new(None)),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        worker.run(Some(Duration::from_secs(6)), std::future::pending()),
    )
    .await
    .expect("the worker never stalls on a dead letter")
    .expect("the worker keeps running");
    assert_eq!(summary.sent, 1);
    // The megabyte key carries the good message again: sent already, it is
    // a duplicate, not a dead letter.
    assert_eq!(
        summary.dead_lettered,
        hostile.len() as u64 + 2,
        "{summary:?}"
    );
    let seen: Vec<String> = fake
        .lock()
        .unwrap()
        .seen
        .iter()
        .map(|s| s.key.clone())
        .collect();
    assert_eq!(
        seen,
        vec![good.message_id.clone()],
        "only the good message reached a provider"
    );

    let letters = read_topic(&config, &config.topics.dlq);
    let reasons: Vec<String> = letters
        .iter()
        .map(|l| {
            l.header(leadflow::kafka::deadletter::dlq_headers::ERROR_MESSAGE)
                .unwrap()
                .to_string()
        })
        .collect();
    for (what, needle) in [
        ("nul in message_id", "message_id contains a NUL"),
        ("nul in to", "to contains a NUL"),
        ("huge template", "template is 5000 bytes long"),
        ("too much data", "data has 300 entries"),
        ("long lead id", "lead_ext_id is 200 bytes long"),
        ("truncated", "truncated"),
        ("just under the limit", "invalid JSON"),
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{what}: {reasons:?}"
        );
    }
    let big = letters
        .iter()
        .find(|l| l.key.as_deref() == Some(&b"L-BIG"[..]))
        .expect("the oversize dead letter");
    assert_eq!(
        big.header(leadflow::kafka::deadletter::dlq_headers::TRUNCATED),
        Some("true")
    );
    assert_eq!(
        big.header(leadflow::kafka::deadletter::dlq_headers::ORIGINAL_VALUE_BYTES),
        Some("1010000")
    );
    let payload = big.payload.as_deref().unwrap();
    assert!(payload.len() < 1_000_000 && just_under.starts_with(payload));
}

backend_tests!(hostile_messages_never_stall_or_crash_the_worker);

/// `text` with every encrypted field (`enc:v1:` and its base64) cut out:
/// a short name could turn up in base64 by chance, and what is encrypted is
/// checked on its own (its key is gone).
fn without_ciphertext(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("enc:v1:") {
        out.push_str(&rest[..at]);
        rest = rest[at + "enc:v1:".len()..]
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || "+/=".contains(c));
    }
    out.push_str(rest);
    out
}

/// Crypto-shredding end to end: with `gdpr.encryption` on, the messages on
/// the topic carry no address or name, the worker sends the plain ones to
/// the provider, and once a lead is erased its message already on the topic
/// can no longer be opened and is dropped.
async fn encrypted_messages_are_sent_in_clear_and_shredded_by_erasure<S: LeadStore + 'static>(
    store: Arc<S>,
    url: &str,
) {
    use base64::Engine;
    use leadflow::events::{InputEvent, InteractionEvent, InteractionKind, LeadEvent};
    use leadflow::gdpr::shredding::{decrypt_message, is_encrypted, ShreddingError};
    use leadflow::gdpr::{request_erasure, ErasureRequest};
    const DAY: i64 = 86_400_000;
    let now = leadflow::core::clock::wall_clock_millis();
    let t0 = now - 3 * DAY;
    let (fake, provider_url) = start_fake().await;
    let mut config = notify_config(url, &provider_url);
    config
        .notify
        .sendgrid
        .templates
        .insert("high_priority_welcome".into(), "d-hp-welcome".into());
    config.gdpr.encryption.enabled = true;
    config.gdpr.encryption.master_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    leadflow::kafka::create_topics(&config).await.unwrap();
    let mut events = Vec::new();
    for (lead, email) in [
        ("ENC-KEPT", "kept@example.com"),
        ("ENC-GONE", "gone@example.com"),
    ] {
        events.push(InputEvent::Lead(LeadEvent {
            event_id: format!("{lead}-created"),
            email: Some(email.into()),
            first_name: Some("Noa".into()),
            initial_score: Some(70.0),
            ..lead_created(lead, t0)
        }));
        // Moves the partition's event-time clock past the day-1 step.
        events.push(InputEvent::Interaction(InteractionEvent {
            event_id: format!("{lead}-visit"),
            ..interaction(lead, 0, InteractionKind::WebVisit, now - 60_000, "web")
        }));
    }
    leadflow::kafka::publish_inputs(
        &config,
        &Codec::new(None),
        &events,
        leadflow::kafka::InputFormat::Avro,
        0,
    )
    .await
    .unwrap();
    let (pipeline, _) = spawn_pipeline(&config, store.clone(), Duration::from_secs(5));
    pipeline.await.unwrap().unwrap();

    // On the topic: ids in clear, the address and the name not.
    let raw = read_topic(&config, &config.topics.outbound);
    assert!(raw.len() >= 2, "{} messages", raw.len());
    for m in &raw {
        let text = without_ciphertext(&String::from_utf8_lossy(m.payload.as_deref().unwrap()));
        assert!(
            text.contains("ENC-"),
            "the lead's id stays readable: {text}"
        );
        for personal in ["kept@example.com", "gone@example.com", "Noa"] {
            assert!(!text.contains(personal), "{personal} readable on the topic");
        }
    }
    let published = published_messages(&config).await;
    assert!(published.iter().all(is_encrypted));
    let gone = published
        .iter()
        .find(|m| m.lead_ext_id == "ENC-GONE")
        .unwrap()
        .clone();

    // Erase ENC-GONE and let the processor apply it.
    let producer = leadflow::kafka::producer(&config.kafka).unwrap();
    let request = ErasureRequest {
        lead_ext_id: "ENC-GONE",
        actor: "test",
        reason: None,
        at: now,
        inactive_since: None,
    };
    request_erasure(
        &config,
        &Codec::new(None),
        &producer,
        store.as_ref(),
        request,
    )
    .await
    .unwrap();
    let (pipeline, _) = spawn_pipeline(&config, store.clone(), Duration::from_secs(5));
    pipeline.await.unwrap().unwrap();
    let keys = store.lead_keys(&["ENC-GONE", "ENC-KEPT"]).await.unwrap();
    assert_eq!(keys["ENC-GONE"], None, "shredded");
    assert!(keys["ENC-KEPT"].is_some());
    assert_eq!(decrypt_message(&gone, None), Err(ShreddingError::KeyErased));

    let metrics = Arc::new(Metrics::new());
    let worker = NotifyWorker::new(
        config.clone(),
        store.clone(),
        Arc::new(Codec::new(None)),
        metrics.clone(),
    )
    .unwrap();
    let summary = worker
        .run(Some(Duration::from_secs(6)), std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.failed, 0, "{:?}", read_dead_letters(&config));
    let seen = fake.lock().unwrap().seen.clone();
    let bodies: Vec<serde_json::Value> = seen
        .iter()
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    assert!(!bodies.is_empty());
    for body in &bodies {
        let p = &body["personalizations"][0];
        assert_eq!(p["to"][0]["email"], "kept@example.com", "{body}");
        assert_eq!(p["dynamic_template_data"]["first_name"], "Noa", "{body}");
    }
    let ledger = store.lead_deliveries("ENC-GONE").await.unwrap();
    assert!(!ledger.is_empty());
    for record in &ledger {
        assert_eq!(record.status, "dropped");
        assert!(
            record
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("shredded"),
            "{record:?}"
        );
    }
    assert_eq!(
        metrics.value("leadflow_gdpr_messages_shredded_total", &[]) as usize,
        ledger.len()
    );
}

backend_tests!(encrypted_messages_are_sent_in_clear_and_shredded_by_erasure);

/// Issue 18's scan. After a simulated stream with nurturing and encryption
/// on, with a set of leads erased in the middle of the log: no table holds
/// any of their emails, phones or names; on the output topics their
/// messages are ciphertext whose key is shredded and nothing else names
/// them; the latest lead-scores record of each is a tombstone; the worker
/// sends them nothing; an export of a kept lead holds what its events said;
/// and a replay of the whole log from the beginning (a new consumer group
/// on the same store) leaves them erased and the scan clean.
async fn erased_leads_leave_no_plaintext_and_stay_erased_through_a_replay<
    S: LeadStore + 'static,
>(
    store: Arc<S>,
    url: &str,
) {
    use base64::Engine;
    use leadflow::events::{InputEvent, LeadEventKind};
    use leadflow::gdpr::shredding::{decrypt_message, is_encrypted, ShreddingError};
    use leadflow::gdpr::{export_lead, request_erasure, ErasureRequest};
    use leadflow::simulate::{generate, SimulationParams};
    let (fake, provider_url) = start_fake().await;
    let mut config = notify_config(url, &provider_url);
    map_every_email_template(&mut config);
    config.gdpr.encryption.enabled = true;
    config.gdpr.encryption.master_key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    leadflow::kafka::create_topics(&config).await.unwrap();
    let events = generate(&SimulationParams {
        seed: 23,
        leads: 80,
        days: 40,
        start: 1_767_225_600_000,
        source_shares: Default::default(),
        inflow_growth: 0.0,
    });
    let (first, second) = events.split_at(events.len() / 2);
    // Erased: every fifth lead created in the first half, eight at most.
    let created: Vec<&leadflow::events::LeadEvent> = first
        .iter()
        .filter_map(|e| match e {
            InputEvent::Lead(l) if l.kind == LeadEventKind::Created => Some(l),
            _ => None,
        })
        .collect();
    let erased: BTreeSet<String> = created
        .iter()
        .step_by(5)
        .take(8)
        .map(|l| l.lead_ext_id.clone())
        .collect();
    // What each lead's events said of it, and the values only erased leads hold.
    let personal = |l: &leadflow::events::LeadEvent| {
        [&l.email, &l.phone, &l.first_name, &l.last_name, &l.company]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<String>>()
    };
    let mut kept_values = BTreeSet::new();
    let mut erased_values = BTreeSet::new();
    for e in &events {
        if let InputEvent::Lead(l) = e {
            let values = personal(l);
            if erased.contains(&l.lead_ext_id) {
                erased_values.extend(values);
            } else {
                kept_values.extend(values);
            }
        }
    }
    let needles: Vec<String> = erased_values.difference(&kept_values).cloned().collect();
    assert!(needles.len() >= erased.len() * 2, "{needles:?}");

    let codec = Codec::new(None);
    let avro = leadflow::kafka::InputFormat::Avro;
    leadflow::kafka::publish_inputs(&config, &codec, first, avro, 0)
        .await
        .unwrap();
    let producer = leadflow::kafka::producer(&config.kafka).unwrap();
    let now = leadflow::core::clock::wall_clock_millis();
    // The processor merges the input topics by event time: erasures dated
    // at the split come between the two halves of every topic, so the
    // erased leads' later interactions and stage changes are dropped.
    let at = second[0].occurred_at();
    for lead in &erased {
        let request = ErasureRequest {
            lead_ext_id: lead,
            actor: "test",
            reason: Some("issue 18 scan"),
            at,
            inactive_since: None,
        };
        request_erasure(&config, &codec, &producer, store.as_ref(), request)
            .await
            .unwrap();
    }
    leadflow::kafka::publish_inputs(&config, &codec, second, avro, 0)
        .await
        .unwrap();
    let (pipeline, metrics) = spawn_pipeline(&config, store.clone(), Duration::from_secs(6));
    let summary = pipeline.await.unwrap().unwrap();
    assert!(summary.dropped_after_erasure > 0, "{summary:?}");
    assert_eq!(
        metrics.value("leadflow_gdpr_erasures_total", &[]) as usize,
        erased.len()
    );
    let worker = NotifyWorker::new(
        config.clone(),
        store.clone(),
        Arc::new(Codec::new(None)),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let sent = worker
        .run(Some(Duration::from_secs(6)), std::future::pending())
        .await
        .unwrap();
    assert!(sent.sent > 0, "{sent:?}");

    let scan = |label: &str, texts: Vec<(String, String)>| {
        let hits: Vec<(String, &String)> = texts
            .iter()
            .flat_map(|(place, text)| {
                needles
                    .iter()
                    .filter(|n| text.contains(n.as_str()))
                    .map(move |n| (place.clone(), n))
            })
            .collect();
        assert!(
            hits.is_empty(),
            "{label}: erased leads' data found: {hits:?}"
        );
    };
    let topics = |config: &Config| {
        let mut texts = Vec::new();
        for topic in [
            &config.topics.scores,
            &config.topics.outbound,
            &config.topics.deliveries,
            &config.topics.forecasts,
            &config.topics.dlq,
        ] {
            for m in read_topic(config, topic) {
                let bytes = m.payload.unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                texts.push((topic.clone(), without_ciphertext(&text)));
            }
        }
        texts
    };
    let check = |label: &'static str| {
        let store = store.clone();
        let config = config.clone();
        let erased = erased.clone();
        let scan = &scan;
        let topics = &topics;
        async move {
            scan(
                &format!("{label}, database"),
                common::all_rows_as_text(url).await,
            );
            scan(&format!("{label}, topics"), topics(&config));
            for lead in &erased {
                let state = store.get_lead(lead).await.unwrap().unwrap();
                assert!(
                    state.erased_at.is_some() && state.email.is_none(),
                    "{label}: {lead}"
                );
                let last = read_topic(&config, &config.topics.scores)
                    .into_iter()
                    .rfind(|m| m.key.as_deref() == Some(lead.as_bytes()))
                    .unwrap_or_else(|| panic!("{label}: no score record for {lead}"));
                assert!(
                    last.payload.is_none(),
                    "{label}: {lead}'s latest score is not a tombstone"
                );
            }
        }
    };
    check("after the stream").await;
    // The scan reads where personal data lives: a kept lead's email is found.
    let kept_email = created
        .iter()
        .find(|l| !erased.contains(&l.lead_ext_id))
        .and_then(|l| l.email.clone())
        .unwrap();
    let rows = common::all_rows_as_text(url).await;
    assert!(rows
        .iter()
        .any(|(table, text)| table == "leads" && text.contains(&kept_email)));

    // Their messages on the topic cannot be opened any more; the provider
    // never heard of them.
    let keys: Vec<&str> = erased.iter().map(String::as_str).collect();
    let stored_keys = store.lead_keys(&keys).await.unwrap();
    for m in published_messages(&config).await {
        assert!(is_encrypted(&m), "{}", m.message_id);
        if erased.contains(&m.lead_ext_id) {
            assert_eq!(stored_keys.get(&m.lead_ext_id).cloned().flatten(), None);
            assert_eq!(decrypt_message(&m, None), Err(ShreddingError::KeyErased));
        }
    }
    let bodies: Vec<String> = fake
        .lock()
        .unwrap()
        .seen
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect();
    scan(
        "provider requests",
        bodies.into_iter().map(|b| ("provider".into(), b)).collect(),
    );

    // A kept lead's export holds what its events said.
    let kept = created
        .iter()
        .find(|l| !erased.contains(&l.lead_ext_id) && l.phone.is_some())
        .unwrap();
    let export = export_lead(store.as_ref(), &kept.lead_ext_id, "test", now)
        .await
        .unwrap();
    let mut expected = (*kept).clone();
    for e in &events {
        if let InputEvent::Lead(l) = e {
            if l.lead_ext_id == kept.lead_ext_id && l.kind == LeadEventKind::Updated {
                for (field, value) in [
                    (&mut expected.email, &l.email),
                    (&mut expected.phone, &l.phone),
                    (&mut expected.first_name, &l.first_name),
                    (&mut expected.last_name, &l.last_name),
                    (&mut expected.company, &l.company),
                    (&mut expected.source, &l.source),
                    (&mut expected.timezone, &l.timezone),
                ] {
                    if value.is_some() {
                        *field = value.clone();
                    }
                }
                expected.attributes.extend(l.attributes.clone());
            }
        }
    }
    let state = &export.state;
    assert_eq!(
        (
            &state.email,
            &state.phone,
            &state.first_name,
            &state.last_name,
            &state.company,
            &state.source,
            &state.timezone,
            &state.attributes,
        ),
        (
            &expected.email,
            &expected.phone,
            &expected.first_name,
            &expected.last_name,
            &expected.company,
            &expected.source,
            &expected.timezone,
            &expected.attributes,
        )
    );
    let stages: Vec<leadflow::events::Stage> = events
        .iter()
        .filter_map(|e| match e {
            InputEvent::StageChange(c) if c.lead_ext_id == kept.lead_ext_id => Some(c.to_stage),
            _ => None,
        })
        .collect();
    let exported: Vec<leadflow::events::Stage> = state.stage_history.iter().map(|t| t.to).collect();
    assert_eq!(exported, stages);
    let consent = kept.consent.as_ref().unwrap();
    let first_statement = &state.consent_ledger[0];
    assert_eq!(
        (first_statement.recorded_at, first_statement.source.as_str()),
        (consent.recorded_at, consent.source.as_str())
    );
    let ledger = store.lead_deliveries(&kept.lead_ext_id).await.unwrap();
    assert_eq!(export.messages.len(), ledger.len());
    assert_eq!(
        export.audit.last().map(|a| a.action.as_str()),
        Some("exported")
    );

    // The whole log again, from the beginning, on the same store.
    let mut replay = config.clone();
    replay.kafka.group_id = format!("{}-replay", config.kafka.group_id);
    let (pipeline, _) = spawn_pipeline(&replay, store.clone(), Duration::from_secs(6));
    let summary = pipeline.await.unwrap().unwrap();
    assert!(summary.consumed as usize >= events.len(), "{summary:?}");
    check("after a replay").await;
}

backend_tests!(erased_leads_leave_no_plaintext_and_stay_erased_through_a_replay);
