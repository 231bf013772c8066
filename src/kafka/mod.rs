//! Kafka at the edge: client configuration, topic administration, and the
//! producer used for input traffic and dead letters. Broker-neutral: only
//! standard Kafka protocol features are used (Apache Kafka, Redpanda, Nisshi).

pub mod deadletter;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

use crate::config::{Config, KafkaConfig};

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Settings every client shares, then `defaults` for this kind of client;
/// the operator's `kafka.client` entries come last and win.
pub fn client_config(kafka: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

/// An idempotent producer: retries inside librdkafka never duplicate or reorder.
/// The processor's producer, shared by the outbox relay and the dead-letter
/// writer. An idempotent producer that lost its sequence state with the
/// broker (OutOfOrderSequenceNumber, seen during rebalances) fails every send
/// from then on; librdkafka's remedy is a new producer, which `renew_if_failed`
/// makes. Nothing is lost: unacknowledged outbox rows are still in the store
/// and a dead letter is retried until acknowledged.
pub struct SharedProducer {
    kafka: KafkaConfig,
    message_max_bytes: usize,
    current: std::sync::Mutex<FutureProducer>,
}

impl SharedProducer {
    /// `message_max_bytes`: the largest record it must be able to send (a
    /// dead letter, `processor.dead_letter_max_bytes`); librdkafka's own
    /// default of 1,000,000 is kept when that is smaller.
    pub fn new(kafka: &KafkaConfig, message_max_bytes: usize) -> Result<Self, KafkaError> {
        Ok(SharedProducer {
            kafka: kafka.clone(),
            message_max_bytes,
            current: std::sync::Mutex::new(sized_producer(kafka, message_max_bytes)?),
        })
    }

    pub fn get(&self) -> FutureProducer {
        self.current.lock().expect("producer lock").clone()
    }

    /// Call after a failed send: replaces the producer if it failed fatally.
    pub fn renew_if_failed(&self) {
        let mut current = self.current.lock().expect("producer lock");
        let Some((code, reason)) = rdkafka::producer::Producer::client(&*current).fatal_error()
        else {
            return;
        };
        match sized_producer(&self.kafka, self.message_max_bytes) {
            Ok(fresh) => {
                tracing::warn!(error = ?code, reason, "producer failed fatally; replaced by a new one");
                *current = fresh;
            }
            Err(e) => {
                tracing::warn!(error = %e, "producer failed fatally; a new one cannot be created yet")
            }
        }
    }
}

pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    sized_producer(kafka, 0)
}

fn sized_producer(
    kafka: &KafkaConfig,
    message_max_bytes: usize,
) -> Result<FutureProducer, KafkaError> {
    let max_bytes = message_max_bytes.max(1_000_000).to_string();
    client_config(
        kafka,
        &[
            ("message.max.bytes", max_bytes.as_str()),
            // The Java client's partitioner, so that keys land on the same
            // partitions whichever client produced them: the input topics
            // are co-partitioned.
            ("partitioner", "murmur2_random"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "60000"),
        ],
    )
    .create()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

/// Creates every topic of SPEC §1: inputs and outputs with
/// `kafka.partitions`, `lead-scores` compacted (it holds the latest score
/// per lead, and a tombstone after an erasure). Existing topics are left as
/// they are, so this is safe to run at every start.
pub async fn create_topics(
    config: &Config,
) -> Result<Vec<(String, TopicOutcome)>, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config(&config.kafka, &[]).create()?;
    let t = &config.topics;
    let partitions = config.kafka.partitions;
    let names = [
        &t.leads,
        &t.interactions,
        &t.stage_changes,
        &t.scores,
        &t.outbound,
        &t.deliveries,
        &t.forecasts,
        &t.dlq,
    ];
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let replication = TopicReplication::Fixed(config.kafka.replication_factor);
            let topic = NewTopic::new(name, partitions, replication);
            if *name == &t.scores {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&topics, &options).await?;
    let mut out = Vec::new();
    for result in results {
        match result {
            Ok(name) => out.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                out.push((name, TopicOutcome::AlreadyExists))
            }
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, code }),
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("encode: {0}")]
    Codec(#[from] crate::codec::CodecError),
    #[error("delivery to {topic} failed: {reason}")]
    Delivery { topic: String, reason: String },
}

/// How `simulate` writes input events: Avro (Confluent-framed with a
/// registry, single-object without) or JSON, as some upstream systems do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    Avro,
    Json,
}

/// Publishes input events to their topics, keyed by lead, in order, at most
/// `rate` events per second (0: as fast as the broker takes them). Waits
/// for every acknowledgement before returning.
pub async fn publish_inputs(
    config: &Config,
    codec: &crate::codec::Codec,
    events: &[crate::events::InputEvent],
    format: InputFormat,
    rate: u32,
) -> Result<u64, PublishError> {
    use futures::stream::{FuturesUnordered, StreamExt};
    use rdkafka::producer::FutureRecord;

    const IN_FLIGHT: usize = 10_000;
    let producer = producer(&config.kafka)?;
    let started = tokio::time::Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut sent = 0u64;
    for (i, event) in events.iter().enumerate() {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        let topic = config.topics.input(event.stream()).to_string();
        let payload = match format {
            InputFormat::Avro => codec.encode_input(&topic, event).await?,
            InputFormat::Json => crate::codec::Codec::encode_input_json(event)?,
        };
        let key = event.lead_ext_id().to_string();
        let producer = &producer;
        pending.push(async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map_err(|(e, _)| PublishError::Delivery {
                    topic: topic.clone(),
                    reason: e.to_string(),
                })
        });
        while pending.len() >= IN_FLIGHT {
            if let Some(result) = pending.next().await {
                result?;
                sent += 1;
            }
        }
    }
    while let Some(result) = pending.next().await {
        result?;
        sent += 1;
    }
    Ok(sent)
}

/// The partition Kafka's default (Java) partitioner and librdkafka's
/// `murmur2_random` give a key: `toPositive(murmur2(key)) % partitions`.
/// Replay uses it to group leads exactly as the broker did.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as i32) % partitions
}

fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Test vectors from Apache Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()) as i32, expected, "{key}");
        }
    }
}
