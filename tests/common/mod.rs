//! Shared test harness: real PostgreSQL, SQLite and Kafka-compatible broker.
//! `make test` starts the broker and PostgreSQL; a test whose service is
//! missing fails with a message that says how to start it.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use leadflow::config::Config;
use leadflow::store::{LeadStore, PgStore, SqliteStore};
use sqlx::Connection;

pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn admin_database_url() -> String {
    std::env::var("LEADFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A PostgreSQL database of the test's own, dropped when the guard goes.
pub struct TestPg {
    pub url: String,
    name: String,
}

impl TestPg {
    pub async fn new() -> TestPg {
        let admin = admin_database_url();
        let name = unique("leadflow_test");
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is not reachable ({e}); run `make postgres` or set LEADFLOW_TEST_DATABASE_URL")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        TestPg {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn store(&self) -> PgStore {
        let store = PgStore::connect(&self.url, 4)
            .await
            .expect("connect test database");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let admin = admin_database_url();
        let name = self.name.clone();
        // Drop on a thread of its own: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A SQLite file in a temporary directory of the test's own.
pub struct TestSqlite {
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestSqlite {
    pub fn new() -> TestSqlite {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("leadflow.db").display());
        TestSqlite { url, _dir: dir }
    }

    pub async fn store(&self) -> SqliteStore {
        let store = SqliteStore::connect(&self.url, 4)
            .await
            .expect("open test sqlite");
        store.migrate().await.expect("migrate");
        store
    }
}

/// A config pointing at the test broker with topics and group of the test's own.
pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::default();
    let id = unique("t");
    config.kafka.bootstrap_servers = kafka_bootstrap();
    config.kafka.group_id = format!("{id}-group");
    config.kafka.partitions = 3;
    config.kafka.session_timeout_ms = 6_000;
    config.topics = config.topics.with_prefix(&format!("{id}-"));
    config.database.url = database_url.to_string();
    config.processor.batch_linger_ms = 20;
    config
}

/// Runs one async test body against both stores: `backend_tests!(name_of_body)`
/// defines `name_of_body::postgres` and `name_of_body::sqlite`.
#[macro_export]
macro_rules! backend_tests {
    ($($body:ident),+ $(,)?) => {
        $(
            mod $body {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let db = $crate::common::TestPg::new().await;
                    let store = db.store().await;
                    super::$body(&store, &db.url).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let db = $crate::common::TestSqlite::new();
                    let store = db.store().await;
                    super::$body(&store, &db.url).await;
                }
            }
        )+
    };
}
