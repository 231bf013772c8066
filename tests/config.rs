//! Bad configuration stops start-up with the key and the reason; bad
//! command-line arguments say what is wrong. Checked both on the library
//! and through the real binary.

use std::path::Path;
use std::process::Command;

use leadflow::config::{Config, ConfigError};

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml_with_env(text, Path::new("leadflow.toml"), &vars)
}

fn error(text: &str, env: &[(&str, &str)]) -> String {
    load(text, env)
        .expect_err("config must be refused")
        .to_string()
}

#[test]
fn defaults_and_the_example_file_load() {
    let defaults = load("", &[]).unwrap();
    assert_eq!(defaults.kafka.bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(defaults.database.url, "sqlite://data/leadflow.db");
    assert_eq!(defaults.topics.scores, "lead-scores");
    let example = std::fs::read_to_string("config/leadflow.example.toml").unwrap();
    let from_example = load(&example, &[]).unwrap();
    // The example documents the defaults: it must say exactly what they are.
    assert_eq!(
        toml::to_string(&from_example).unwrap(),
        toml::to_string(&defaults).unwrap()
    );
}

#[test]
fn an_unknown_key_names_the_key_and_the_line() {
    let e = error(
        "[kafka]\nbootstrap_servers = \"x:1\"\nbootstrap_server = \"typo:1\"\n",
        &[],
    );
    assert!(e.contains("bootstrap_server"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    let e = error("[procesor]\nbatch_size = 5\n", &[]);
    assert!(e.contains("procesor"), "{e}");
}

#[test]
fn a_bad_value_names_the_key_and_the_reason() {
    let e = error("[processor]\nbatch_size = \"many\"\n", &[]);
    assert!(e.contains("batch_size") && e.contains("line 2"), "{e}");
    let e = error("[processor]\nbatch_size = 0\n", &[]);
    assert!(
        e.contains("processor.batch_size") && e.contains("at least 1"),
        "{e}"
    );
    let e = error("[processor]\nearliest_event_time = \"last tuesday\"\n", &[]);
    assert!(
        e.contains("processor.earliest_event_time") && e.contains("RFC 3339"),
        "{e}"
    );
    let e = error("[processor]\ndead_letter_max_bytes = 100\n", &[]);
    assert!(
        e.contains("processor.dead_letter_max_bytes") && e.contains("less than 4096"),
        "{e}"
    );
    let e = error("[database]\nurl = \"mysql://x\"\n", &[]);
    assert!(e.contains("database.url") && e.contains("neither"), "{e}");
    let e = error("[scoring.rules]\nengagement_half_life_days = -3.0\n", &[]);
    assert!(
        e.contains("scoring.rules.engagement_half_life_days") && e.contains("positive"),
        "{e}"
    );
    let e = error(
        "[scoring.rules.interaction_weights]\ncarrier_pigeon = 3.0\n",
        &[],
    );
    assert!(
        e.contains("scoring.rules.interaction_weights.carrier_pigeon") && e.contains("unknown"),
        "{e}"
    );
    let e = error("[scoring.segments]\npremium = 40.0\n", &[]);
    assert!(
        e.contains("scoring.segments") && e.contains("must fall"),
        "{e}"
    );
    let e = error(
        "[scoring.rules]\nvalue_bands = [{min = 10.0, points = 1.0}, {min = 5.0, points = 2.0}]\n",
        &[],
    );
    assert!(e.contains("scoring.rules.value_bands[1]"), "{e}");
    let e = error("[scoring.model]\nml_weight = 1.5\n", &[]);
    assert!(
        e.contains("scoring.model.ml_weight") && e.contains("outside 0..1"),
        "{e}"
    );
    let e = error("[scoring.training]\nmodel_type = \"xgboost\"\n", &[]);
    assert!(e.contains("model_type") && e.contains("line 2"), "{e}");
    let e = error(
        "[scoring.training.gradient_boosting]\nsubsample = 0.0\n",
        &[],
    );
    assert!(
        e.contains("scoring.training.gradient_boosting.subsample") && e.contains("(0, 1]"),
        "{e}"
    );
    let e = error(
        "[scoring.training.gradient_boosting]\nlinear_start_alpha = -1.0\n",
        &[],
    );
    assert!(
        e.contains("scoring.training.gradient_boosting.linear_start_alpha")
            && e.contains("penalty of 0 or more"),
        "{e}"
    );
    let e = error("[api]\nmax_page_size = 10\ndefault_page_size = 50\n", &[]);
    assert!(
        e.contains("api.default_page_size") && e.contains("1..=max_page_size"),
        "{e}"
    );
    let e = error(
        "[api.rate_limits]\nread = { per_second = 0.0, burst = 5 }\n",
        &[],
    );
    assert!(
        e.contains("api.rate_limits.read.per_second") && e.contains("positive"),
        "{e}"
    );
    let e = error("[api.rate_limits]\nwrite = { per_second = 5.0 }\n", &[]);
    assert!(e.contains("burst"), "{e}");
    let e = error("[analytics]\ngrace_ms = 90000000\n", &[]);
    assert!(
        e.contains("analytics.grace_ms") && e.contains("shorter than a day"),
        "{e}"
    );
    let e = error(
        "[scoring.features]\nnumeric_attributes = [\"size\"]\ncategorical_attributes = [\"size\"]\n",
        &[],
    );
    assert!(e.contains("scoring.features") && e.contains("both"), "{e}");
    let e = error("[topics]\nleads = \"bad topic!\"\n", &[]);
    assert!(e.contains("topics.leads") && e.contains("only A-Z"), "{e}");
    let e = error("[topics]\nscores = \"leads\"\n", &[]);
    assert!(
        e.contains("topics.scores") && e.contains("already used by topics.leads"),
        "{e}"
    );
}

#[test]
fn environment_overrides_apply_on_top_of_the_file() {
    let c = load(
        "[kafka]\ngroup_id = \"from-file\"\npartitions = 3\n",
        &[
            ("DATABASE_URL", "postgres://u@db:5432/leads"),
            ("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092"),
            ("LEADFLOW__KAFKA__GROUP_ID", "from-env"),
            ("LEADFLOW__PROCESSOR__BATCH_SIZE", "250"),
            ("LEADFLOW__SCORING__RULES__SOURCE_WEIGHTS__WEBINAR", "12.5"),
            // A string key takes the text as typed, though it reads as a number.
            ("LEADFLOW__NOTIFY__TWILIO__FROM", "+15550000"),
            ("LEADFLOW__NOTIFY__SENDGRID__FROM_NAME", "2026"),
            ("UNRELATED", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.notify.twilio.from, "+15550000");
    assert_eq!(c.notify.sendgrid.from_name, "2026");
    assert_eq!(c.database.url, "postgres://u@db:5432/leads");
    assert_eq!(c.kafka.bootstrap_servers, "broker-1:9092,broker-2:9092");
    assert_eq!(c.kafka.group_id, "from-env");
    assert_eq!(c.kafka.partitions, 3, "file value kept where no override");
    assert_eq!(c.processor.batch_size, 250);
    assert_eq!(c.scoring.rules.source_weights["webinar"], 12.5);
}

#[test]
fn a_bad_environment_override_names_the_variable_and_key() {
    let e = error("", &[("LEADFLOW__KAFKA__PARTITONS", "3")]);
    assert!(
        e.contains("LEADFLOW__KAFKA__PARTITONS") && e.contains("partitons"),
        "{e}"
    );
    let e = error("", &[("LEADFLOW__PROCESSOR__BATCH_SIZE", "lots")]);
    assert!(
        e.contains("LEADFLOW__PROCESSOR__BATCH_SIZE") && e.contains("processor.batch_size"),
        "{e}"
    );
    let e = error("", &[("DATABASE_URL", "oracle://x")]);
    assert!(e.contains("database.url"), "{e}");
}

fn leadflow(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leadflow"));
    cmd.args(args)
        .env_remove("LEADFLOW_CONFIG")
        .env_remove("DATABASE_URL");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run leadflow");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_binary_refuses_a_bad_config_file_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[kafka]\nsesion_timeout_ms = 6000\n").unwrap();
    let (ok, text) = leadflow(&["--config", path.to_str().unwrap(), "migrate"], &[]);
    assert!(!ok);
    assert!(
        text.contains("sesion_timeout_ms") && text.contains("line 2"),
        "{text}"
    );
    let (ok, text) = leadflow(&["migrate"], &[("LEADFLOW__PROCESSOR__DEDUP_WINDOW", "0")]);
    assert!(!ok);
    assert!(text.contains("processor.dedup_window"), "{text}");
    let (ok, text) = leadflow(&["--config", "/nonexistent/leadflow.toml", "migrate"], &[]);
    assert!(!ok);
    assert!(text.contains("/nonexistent/leadflow.toml"), "{text}");
}

#[test]
fn notify_refuses_to_start_without_provider_credentials() {
    // Everything `leadflow notify` needs, with one entry changed per case.
    let refused = |key: &str, value: &str| {
        let mut env = vec![
            ("SENDGRID_API_KEY", "SG.x"),
            ("LEADFLOW__NOTIFY__SENDGRID__FROM_EMAIL", "a@b.c"),
            ("TWILIO_ACCOUNT_SID", "AC1"),
            ("TWILIO_AUTH_TOKEN", "t"),
            ("LEADFLOW__NOTIFY__TWILIO__FROM", "+15550000"),
        ];
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
        // Bounded, should the check ever let it start.
        let (ok, text) = leadflow(&["notify", "--exit-when-idle", "1"], &env);
        assert!(!ok, "{key}={value} was accepted: {text}");
        text
    };
    let text = refused("SENDGRID_API_KEY", "");
    assert!(
        text.contains("notify.sendgrid.api_key") && text.contains("SENDGRID_API_KEY"),
        "{text}"
    );
    let text = refused("LEADFLOW__NOTIFY__SENDGRID__RATE_PER_SECOND", "0");
    assert!(text.contains("notify.sendgrid.rate_per_second"), "{text}");
    let text = refused(
        "LEADFLOW__NOTIFY__TWILIO__TEMPLATES__HELLO",
        "Hi {{first name}}",
    );
    assert!(
        text.contains("notify.twilio.templates.hello") && text.contains("not a field name"),
        "{text}"
    );
}

#[test]
fn the_binary_refuses_a_bad_sequences_file_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sequences.toml"),
        "[[sequence]]\nname = \"premium\"\nsegment = \"premium\"\nsteps = [\n  { day = 1, channel = \"email\", template = \"a\" },\n  { day = 1, channel = \"pigeon\", template = \"b\" },\n]\n",
    )
    .unwrap();
    let path = dir.path().join("leadflow.toml");
    // Relative to the config file's directory.
    std::fs::write(&path, "[nurture]\nsequences_file = \"sequences.toml\"\n").unwrap();
    let (ok, text) = leadflow(&["--config", path.to_str().unwrap(), "migrate"], &[]);
    assert!(!ok);
    assert!(
        text.contains("sequences.toml:6: sequence `premium`: unknown channel `pigeon`"),
        "{text}"
    );
    std::fs::write(&path, "[nurture]\nsequences_file = \"missing.toml\"\n").unwrap();
    let (ok, text) = leadflow(&["--config", path.to_str().unwrap(), "migrate"], &[]);
    assert!(!ok);
    assert!(
        text.contains("missing.toml") && text.contains("cannot read"),
        "{text}"
    );
}

#[test]
fn simulate_with_nonsense_arguments_says_what_is_wrong() {
    let cases: [(&[&str], &str); 5] = [
        (&["simulate", "--leads", "many"], "--leads"),
        (&["simulate", "--leads", "0"], "--leads must be at least 1"),
        (&["simulate", "--days", "-4"], "--days"),
        (
            &[
                "simulate",
                "--start",
                "yesterday-ish",
                "--output",
                "/dev/null",
            ],
            "--start",
        ),
        (&["simulate", "--format", "xml"], "--format"),
    ];
    for (args, expected) in cases {
        let (ok, text) = leadflow(args, &[]);
        assert!(!ok, "{args:?} must fail");
        assert!(text.contains(expected), "{args:?}: {text}");
    }
}

#[test]
fn simulate_writes_a_deterministic_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    for path in [&a, &b] {
        let (ok, text) = leadflow(
            &[
                "simulate",
                "--seed",
                "9",
                "--leads",
                "50",
                "--days",
                "20",
                "--start",
                "2026-03-01",
                "--output",
                path.to_str().unwrap(),
            ],
            &[],
        );
        assert!(ok, "{text}");
        assert!(text.contains("50 leads over 20 days"), "{text}");
    }
    let a = std::fs::read(&a).unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, std::fs::read(&b).unwrap());
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["simulate", "--help"],
        &["topics", "--help"],
        &["topics", "create", "--help"],
        &["migrate", "--help"],
        &["leads", "--help"],
        &["leads", "list", "--help"],
        &["experiments", "--help"],
        &["notify", "--help"],
    ] {
        let (ok, text) = leadflow(args, &[]);
        assert!(ok, "{args:?}: {text}");
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
}

#[test]
fn run_from_file_replays_a_stream_and_writes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream.jsonl");
    let out = dir.path().join("out");
    let db = format!("sqlite://{}", dir.path().join("replay.db").display());
    let (ok, text) = leadflow(
        &[
            "simulate",
            "--seed",
            "2",
            "--leads",
            "40",
            "--days",
            "15",
            "--start",
            "2026-02-01",
            "--output",
            stream.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{text}");
    let replay = |db: &str| {
        leadflow(
            &[
                "run",
                "--from-file",
                stream.to_str().unwrap(),
                "--output-dir",
                out.to_str().unwrap(),
            ],
            &[("DATABASE_URL", db)],
        )
    };
    let (ok, text) = replay(&db);
    assert!(ok, "{text}");
    assert!(text.contains("outputs written"), "{text}");
    let scores = std::fs::read_to_string(out.join("lead-scores.jsonl")).unwrap();
    assert!(scores.lines().count() >= 40, "at least one score per lead");
    assert!(scores.lines().all(|l| l.contains("\"type\":\"score\"")));
    // A second replay into a fresh database writes byte-identical outputs.
    let (ok, text) = replay(&format!(
        "sqlite://{}",
        dir.path().join("again.db").display()
    ));
    assert!(ok, "{text}");
    assert_eq!(
        std::fs::read_to_string(out.join("lead-scores.jsonl")).unwrap(),
        scores
    );
    // Nurturing ran on event time: the same messages, byte for byte.
    let messages = std::fs::read_to_string(out.join("outbound-messages.jsonl")).unwrap();
    assert!(messages.lines().count() >= 5, "{messages}");
    assert!(messages.lines().all(|l| l.contains("\"type\":\"message\"")));
    assert!(
        text.contains("premium_welcome") || text.contains("standard_welcome"),
        "{text}"
    );
    let (ok, again) = replay(&format!(
        "sqlite://{}",
        dir.path().join("third.db").display()
    ));
    assert!(ok, "{again}");
    assert_eq!(
        std::fs::read_to_string(out.join("outbound-messages.jsonl")).unwrap(),
        messages
    );
    // The A/B test of the standard sequence, counted from the stored leads.
    let (ok, json) = leadflow(&["experiments", "--json"], &[("DATABASE_URL", &db)]);
    assert!(ok, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let experiment = &report[0];
    assert_eq!(experiment["experiment"], "standard_second_email");
    let variants = experiment["variants"].as_array().unwrap();
    assert_eq!(variants[0]["variant"], "overview");
    assert_eq!(variants[0]["control"], true);
    let in_messages: std::collections::BTreeSet<String> = messages
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m["sequence"] == "standard")
        .map(|m| m["lead_ext_id"].as_str().unwrap().to_string())
        .collect();
    let enrolled: i64 = variants
        .iter()
        .map(|v| v["enrolled"].as_i64().unwrap())
        .sum();
    assert!(
        enrolled as usize >= in_messages.len() && enrolled > 0,
        "{json}"
    );
    let (ok, table) = leadflow(&["experiments"], &[("DATABASE_URL", &db)]);
    assert!(ok && table.contains("overview (control)"), "{table}");
    // A stream file with a bad line is refused with its line number.
    std::fs::write(&stream, "{\"type\":\"lead\"}\n").unwrap();
    let (ok, text) = replay(&db);
    assert!(!ok);
    assert!(text.contains("stream.jsonl:1"), "{text}");
}

#[test]
fn encryption_needs_a_master_key_of_32_bytes_which_the_environment_can_give() {
    let on = "[gdpr.encryption]\nenabled = true\n";
    let missing = error(on, &[]);
    assert!(missing.contains("gdpr.encryption.master_key"), "{missing}");
    let short = error(
        on,
        &[("LEADFLOW__GDPR__ENCRYPTION__MASTER_KEY", "c2hvcnQ=")],
    );
    assert!(
        short.contains("gdpr.encryption.master_key") && short.contains("5 bytes"),
        "{short}"
    );
    let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let retired = error(
        &format!("{on}retired_master_keys = [\"{key}\", \"nope!\"]\n"),
        &[("LEADFLOW__GDPR__ENCRYPTION__MASTER_KEY", key)],
    );
    assert!(
        retired.contains("gdpr.encryption.retired_master_keys[1]"),
        "{retired}"
    );
    let config = load(on, &[("LEADFLOW__GDPR__ENCRYPTION__MASTER_KEY", key)]).unwrap();
    assert!(config.gdpr.encryption.master_keys().is_some());
    // Retention with no interval to look at.
    let retention = error(
        "[gdpr]\ninactive_retention_days = 30\nretention_check_interval_s = 0\n",
        &[],
    );
    assert!(
        retention.contains("gdpr.retention_check_interval_s"),
        "{retention}"
    );
}
