//! Partition assignment at the offsets the store holds: the rebalance
//! callback reads each assigned partition's next offset from the database
//! and assigns once with those offsets (as rust-arroyo does); a partition
//! the database has never seen starts from the beginning.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tracing::error;

use crate::metrics::internal_events::{PartitionsAssigned, PartitionsRevoked};
use crate::metrics::Metrics;
use crate::store::{with_store_retry, LeadStore};

pub type TopicPartition = (String, i32);

/// This instance's partitions and where the database says each one stands,
/// shared by the rebalance callback, the loop and the outbox relay.
#[derive(Default)]
pub struct Assignment {
    state: Mutex<AssignmentState>,
}

#[derive(Default, Clone)]
pub(super) struct AssignmentState {
    /// Bumped by every rebalance: the loop drops what it buffered before.
    pub(super) generation: u64,
    /// Owned topic-partitions and their stored next offset (`None`: no row yet).
    pub(super) positions: BTreeMap<TopicPartition, Option<i64>>,
    /// Set when the callback could not read the store; the loop stops on it.
    pub(super) failure: Option<String>,
}

impl Assignment {
    /// Installs a new assignment (empty on revocation) as a new generation.
    pub(super) fn replace(
        &self,
        positions: BTreeMap<TopicPartition, Option<i64>>,
        failure: Option<String>,
    ) {
        let mut state = self.state.lock().expect("assignment lock");
        state.generation += 1;
        state.positions = positions;
        state.failure = failure;
    }

    pub(super) fn failure(&self) -> Option<String> {
        self.state.lock().expect("assignment lock").failure.clone()
    }
    pub(super) fn snapshot(&self) -> AssignmentState {
        self.state.lock().expect("assignment lock").clone()
    }

    pub(super) fn generation(&self) -> u64 {
        self.state.lock().expect("assignment lock").generation
    }

    /// The input partition numbers owned; the outbox relay publishes their rows.
    pub fn owned_partition_numbers(&self) -> Vec<i32> {
        let state = self.state.lock().expect("assignment lock");
        let set: BTreeSet<i32> = state.positions.keys().map(|(_, p)| *p).collect();
        set.into_iter().collect()
    }
}

/// The consumer context: assigns partitions at the offsets the store holds.
pub struct AssignmentContext<S> {
    pub(super) store: Arc<S>,
    pub(super) group: String,
    pub(super) assignment: Arc<Assignment>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl<S: LeadStore + 'static> ClientContext for AssignmentContext<S> {}

impl<S: LeadStore + 'static> ConsumerContext for AssignmentContext<S> {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let revoked = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
            self.assignment.replace(BTreeMap::new(), None);
            self.metrics.emit(PartitionsRevoked {
                partitions: tpl.count(),
                error: (!revoked).then_some(&err as &dyn std::fmt::Debug),
            });
            let _ = base.unassign();
            return;
        }
        // The callback runs inside the consumer's poll on a runtime worker;
        // block_in_place lets the store query run there. The assignment lock
        // is not held meanwhile, so the relay is never blocked on it.
        let stored = tokio::task::block_in_place(|| {
            self.runtime.block_on(with_store_retry(
                "read partition offsets",
                &self.metrics,
                || self.store.partition_offsets(&self.group),
            ))
        });
        let stored = match stored {
            Ok(rows) => rows,
            Err(e) => {
                error!(error = %e, "cannot read partition offsets; assigning nothing");
                self.assignment
                    .replace(BTreeMap::new(), Some(e.to_string()));
                let _ = base.unassign();
                return;
            }
        };
        let by_tp: HashMap<(&str, i32), i64> = stored
            .iter()
            .map(|o| ((o.topic.as_str(), o.partition), o.next_offset))
            .collect();
        let mut assigned = TopicPartitionList::new();
        let mut positions = BTreeMap::new();
        for elem in tpl.elements() {
            let next = by_tp.get(&(elem.topic(), elem.partition())).copied();
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = assigned.add_partition_offset(elem.topic(), elem.partition(), offset) {
                error!(error = %e, "cannot build the assignment");
            }
            positions.insert((elem.topic().to_string(), elem.partition()), next);
        }
        let failure = base.assign(&assigned).err().map(|e| {
            error!(error = %e, "assign failed");
            e.to_string()
        });
        self.metrics.emit(PartitionsAssigned {
            partitions: assigned.count(),
        });
        self.assignment.replace(positions, failure);
    }
}
