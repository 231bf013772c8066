//! One deterministic order for the co-partitioned input streams.
//!
//! Kafka orders records only within a topic-partition. Partition p of
//! `leads`, `lead-interactions`, `lead-stage-changes` and `message-deliveries`
//! holds the same leads, and the order in which their records are applied
//! decides which scores and messages are published. As Kafka Streams does for
//! co-partitioned inputs, each partition group buffers the streams and always
//! applies the head with the earliest event time (ties: lead events, then
//! stage changes, then interactions, then delivery reports), never reordering
//! within one stream. While a stream's queue is empty, the group waits unless
//! the caller says nothing more is coming for that stream yet (caught up with
//! the broker, or waited long enough).
//!
//! A replay runs the same merge over a file with every stream complete, so it
//! applies each lead's events in the same order as a live run that was not
//! forced to stop waiting.

use std::collections::VecDeque;

use crate::events::{InputStream, Millis};

/// A buffered record: its offset, its event time (`None` for a record that
/// did not decode; it touches no state and goes first), and the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending<T> {
    pub offset: i64,
    pub time: Option<Millis>,
    pub item: T,
}

fn rank(stream: InputStream) -> usize {
    match stream {
        InputStream::Leads => 0,
        InputStream::StageChanges => 1,
        InputStream::Interactions => 2,
        InputStream::Deliveries => 3,
    }
}

fn slot(stream: InputStream) -> usize {
    match stream {
        InputStream::Leads => 0,
        InputStream::Interactions => 1,
        InputStream::StageChanges => 2,
        InputStream::Deliveries => 3,
    }
}

#[derive(Debug)]
pub struct MergeBuffer<T> {
    queues: [VecDeque<Pending<T>>; 4],
}

impl<T> Default for MergeBuffer<T> {
    fn default() -> Self {
        MergeBuffer {
            queues: [
                VecDeque::new(),
                VecDeque::new(),
                VecDeque::new(),
                VecDeque::new(),
            ],
        }
    }
}

impl<T> MergeBuffer<T> {
    pub fn push(&mut self, stream: InputStream, pending: Pending<T>) {
        self.queues[slot(stream)].push_back(pending);
    }

    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Pops records in merged order for as long as that order is certain.
    /// `may_skip(stream)` answers, for a stream whose queue is empty, whether
    /// to go on without it; if it says no, draining stops there.
    pub fn drain(
        &mut self,
        may_skip: impl Fn(InputStream) -> bool,
        out: &mut Vec<(InputStream, Pending<T>)>,
    ) {
        loop {
            let mut best: Option<(InputStream, (Millis, usize))> = None;
            for stream in InputStream::ALL {
                match self.queues[slot(stream)].front() {
                    None if !may_skip(stream) => return,
                    None => {}
                    Some(head) => {
                        let key = (head.time.unwrap_or(Millis::MIN), rank(stream));
                        if best.is_none_or(|(_, k)| key < k) {
                            best = Some((stream, key));
                        }
                    }
                }
            }
            let Some((stream, _)) = best else { return };
            let pending = self.queues[slot(stream)]
                .pop_front()
                .expect("non-empty head");
            out.push((stream, pending));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InputStream::*;

    fn p(offset: i64, time: Option<Millis>) -> Pending<&'static str> {
        Pending {
            offset,
            time,
            item: "",
        }
    }

    fn order(out: &[(InputStream, Pending<&str>)]) -> Vec<(InputStream, i64)> {
        out.iter().map(|(s, p)| (*s, p.offset)).collect()
    }

    #[test]
    fn merges_by_event_time_and_keeps_each_stream_in_order() {
        let mut b = MergeBuffer::default();
        b.push(Leads, p(0, Some(10)));
        b.push(Leads, p(1, Some(40)));
        b.push(Interactions, p(0, Some(20)));
        // Out of time order inside a stream: stays after its predecessor.
        b.push(Interactions, p(1, Some(5)));
        b.push(StageChanges, p(0, Some(30)));
        let mut out = Vec::new();
        b.drain(|_| true, &mut out);
        assert_eq!(
            order(&out),
            [
                (Leads, 0),
                (Interactions, 0),
                (Interactions, 1),
                (StageChanges, 0),
                (Leads, 1)
            ]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn waits_for_an_empty_stream_unless_told_to_go_on() {
        let mut b = MergeBuffer::default();
        b.push(Leads, p(0, Some(10)));
        b.push(Interactions, p(0, Some(20)));
        let mut out = Vec::new();
        // Stage changes may still bring something earlier than 10.
        b.drain(|s| s != StageChanges, &mut out);
        assert!(out.is_empty());
        b.push(StageChanges, p(0, Some(15)));
        b.drain(|s| s != StageChanges, &mut out);
        // Leads@10 and stage@15 go; then the stage queue is empty again.
        assert_eq!(order(&out), [(Leads, 0), (StageChanges, 0)]);
        assert_eq!(b.len(), 1);
        b.drain(|_| true, &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn ties_go_to_leads_then_stage_changes_then_interactions() {
        let mut b = MergeBuffer::default();
        b.push(Interactions, p(0, Some(7)));
        b.push(StageChanges, p(0, Some(7)));
        b.push(Leads, p(0, Some(7)));
        let mut out = Vec::new();
        b.drain(|_| true, &mut out);
        assert_eq!(
            order(&out),
            [(Leads, 0), (StageChanges, 0), (Interactions, 0)]
        );
    }

    #[test]
    fn undecodable_records_go_first() {
        let mut b = MergeBuffer::default();
        b.push(Leads, p(0, Some(1)));
        b.push(Interactions, p(0, None));
        let mut out = Vec::new();
        b.drain(|_| true, &mut out);
        assert_eq!(order(&out), [(Interactions, 0), (Leads, 0)]);
    }
}
