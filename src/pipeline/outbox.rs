//! The outbox relay: publishes the output events that batches wrote to the
//! `outbox` table, in order per source partition, with an idempotent
//! producer, and deletes each row only after the broker acknowledged it.
//!
//! A crash between the acknowledgement and the delete publishes those rows
//! again after the restart. Every output id is deterministic, so a consumer
//! can tell the repeat; nothing is ever lost.
//!
//! With `gdpr.encryption` on, an OutboundMessage's personal fields are
//! encrypted here with its lead's data key (made with the lead's first
//! message); a message whose lead's key was shredded by an erasure is not
//! published (`gdpr::shredding`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;
use tokio::sync::{watch, Notify};
use tracing::warn;

use crate::codec::{Codec, CodecError};
use crate::core::apply::Output;
use crate::core::clock::wall_clock_millis;
use crate::gdpr::shredding::{encrypt_message, DataKey, MasterKeys, ShreddingError};
use crate::kafka::SharedProducer;
use crate::metrics::internal_events::{
    MessageShredded, OutboxPublishFailed, OutboxRowsDeleted, OutputPublished,
};
use crate::metrics::Metrics;
use crate::store::{LeadStore, OutboxEntry, StoreError};

use super::Assignment;
use crate::retry::Backoff;
use crate::store::with_store_retry;

/// Rows published per round trip to the store.
const RELAY_BATCH: i64 = 500;

pub const OUTPUT_ID_HEADER: &str = "leadflow.output.id";

pub struct OutboxRelay<S> {
    pub store: Arc<S>,
    pub codec: Arc<Codec>,
    pub producer: Arc<SharedProducer>,
    pub assignment: Arc<Assignment>,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Set when `gdpr.encryption` is on.
    pub master_keys: Option<MasterKeys>,
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("outbox row {0} does not decode: {1}")]
    Payload(String, String),
    #[error("encode: {0}")]
    Codec(#[from] CodecError),
    #[error("broker: {0}")]
    Broker(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("data key: {0}")]
    Key(#[from] ShreddingError),
}

impl<S: LeadStore + 'static> OutboxRelay<S> {
    /// Publishes until `stop` turns true, then drains what the owned
    /// partitions still have pending and returns.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let stopping = *stop.borrow();
            let partitions = self.assignment.owned_partition_numbers();
            let rows = match with_store_retry("outbox read", &self.metrics, || {
                self.store.outbox_pending(&partitions, RELAY_BATCH)
            })
            .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    warn!(error = %e, "outbox relay cannot read the outbox; stopping the relay");
                    return;
                }
            };
            if rows.is_empty() {
                if stopping {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            match self.publish(&rows).await {
                Ok(()) => {
                    backoff.reset();
                    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
                    if let Err(e) = with_store_retry("outbox delete", &self.metrics, || {
                        self.store.outbox_delete(&seqs)
                    })
                    .await
                    {
                        warn!(error = %e, "outbox relay cannot delete published rows; stopping the relay");
                        return;
                    }
                    self.metrics.emit(OutboxRowsDeleted { rows: rows.len() });
                }
                Err(e) => {
                    self.producer.renew_if_failed();
                    let delay = backoff.next_delay();
                    self.metrics.emit(OutboxPublishFailed {
                        error: &e,
                        retry_in: delay,
                    });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn publish(&self, rows: &[OutboxEntry]) -> Result<(), PublishError> {
        let outputs: Vec<Output> = rows
            .iter()
            .map(|row| {
                serde_json::from_str(&row.payload)
                    .map_err(|e| PublishError::Payload(row.output_id.clone(), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let keys = match &self.master_keys {
            Some(master) => self.message_keys(master, &outputs).await?,
            None => HashMap::new(),
        };
        let mut acks = FuturesOrdered::new();
        for (row, output) in rows.iter().zip(&outputs) {
            // A tombstone has no value: compaction then drops the key.
            let payload = match output {
                Output::Score(score) => Some(self.codec.encode(&row.topic, score).await?),
                Output::Message(message) if self.master_keys.is_none() => {
                    Some(self.codec.encode(&row.topic, message).await?)
                }
                Output::Message(message) => match keys.get(&message.lead_ext_id) {
                    Some(key) => {
                        let sealed = encrypt_message(message, key);
                        Some(self.codec.encode(&row.topic, &sealed).await?)
                    }
                    None => {
                        // Its lead was erased after the row was read: the
                        // row goes with the published ones, unpublished.
                        self.metrics.emit(MessageShredded {
                            message_id: &message.message_id,
                        });
                        continue;
                    }
                },
                Output::Forecast(forecast) => Some(self.codec.encode(&row.topic, forecast).await?),
                Output::Tombstone { .. } => None,
            };
            let producer = self.producer.get();
            acks.push_back(async move {
                let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: OUTPUT_ID_HEADER,
                    value: Some(row.output_id.as_str()),
                });
                let record = FutureRecord::to(&row.topic).key(&row.key).headers(headers);
                let record = match &payload {
                    Some(payload) => record.payload(payload),
                    None => record,
                };
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|_| row.topic.clone())
                    .map_err(|(e, _)| PublishError::Broker(e.to_string()))
            });
        }
        while let Some(ack) = acks.next().await {
            let topic = ack?;
            self.metrics.emit(OutputPublished { topic: &topic });
        }
        Ok(())
    }

    /// The data key of each lead with a message among `outputs`, made for
    /// a lead that has none yet; a lead whose key was shredded has none.
    async fn message_keys(
        &self,
        master: &MasterKeys,
        outputs: &[Output],
    ) -> Result<HashMap<String, DataKey>, PublishError> {
        let mut leads: Vec<&str> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Message(m) => Some(m.lead_ext_id.as_str()),
                _ => None,
            })
            .collect();
        leads.sort_unstable();
        leads.dedup();
        if leads.is_empty() {
            return Ok(HashMap::new());
        }
        let mut stored = self.store.lead_keys(&leads).await?;
        let new: Vec<(String, String)> = leads
            .iter()
            .filter(|l| !stored.contains_key(**l))
            .map(|l| (l.to_string(), master.wrap(&DataKey::random())))
            .collect();
        if !new.is_empty() {
            stored.extend(
                self.store
                    .ensure_lead_keys(&new, wall_clock_millis())
                    .await?,
            );
        }
        let mut keys = HashMap::new();
        for (lead, wrapped) in stored {
            if let Some(wrapped) = wrapped {
                keys.insert(lead, master.unwrap(&wrapped)?);
            }
        }
        Ok(keys)
    }
}
