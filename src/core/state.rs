//! A lead's rolling state: plain data, serialized as the store's JSON
//! document. What changes it is in [`super::apply`] and [`super::nurture`].
//!
//! The input topics are co-partitioned but Kafka orders records only
//! within one topic-partition, so a lead's interactions may be applied before
//! its LeadEvent. The state is therefore built so that it does not depend on
//! the interleaving of the three topics: counts are sums, first/last times
//! are min/max, consent keeps the most recently *recorded* statement per
//! channel, engagement is an order-independent decayed sum, and a lead first
//! seen through an interaction or stage change starts as a stub that its
//! LeadEvent later fills in.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::core::rules::{DecayedSum, RuleConfig, RuleInputs};
use crate::core::slots::ForecastSlots;
use crate::events::{Channel, InteractionKind, Millis, Segment, Stage};

/// Consent for one channel: what was said, when and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelConsent {
    pub granted: bool,
    pub recorded_at: Millis,
    pub source: String,
}

/// What put a line in the consent ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentChangeKind {
    /// Consent as a LeadEvent stated it.
    Statement,
    /// An unsubscribe interaction: consent withdrawn.
    Unsubscribe,
    /// The address bounced (an interaction or a delivery report): the
    /// channel stops, consent itself is unchanged.
    Bounce,
}

/// One line of a lead's consent ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentChange {
    pub channel: Channel,
    pub granted: bool,
    pub kind: ConsentChangeKind,
    /// When it was given or withdrawn (for a statement, when upstream
    /// recorded it; else the event's time).
    pub recorded_at: Millis,
    pub source: String,
    /// The event that carried it.
    pub event_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsentState {
    pub email: Option<ChannelConsent>,
    pub sms: Option<ChannelConsent>,
}

impl ConsentState {
    /// Whether each channel is granted, as the ledger's statements and
    /// unsubscribes leave it (the latest line per channel).
    pub fn from_ledger(ledger: &[ConsentChange]) -> (Option<bool>, Option<bool>) {
        let latest = |channel: Channel| {
            ledger
                .iter()
                .rfind(|c| c.channel == channel && c.kind != ConsentChangeKind::Bounce)
                .map(|c| c.granted)
        };
        (latest(Channel::Email), latest(Channel::Sms))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTransition {
    pub from: Option<Stage>,
    pub to: Stage,
    pub at: Millis,
    pub owner: Option<String>,
    pub deal_value: Option<f64>,
    pub event_id: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct InteractionStats {
    pub count: u64,
    pub first_at: Millis,
    pub last_at: Millis,
}

/// The last score leadflow published for the lead, to publish only changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSnapshot {
    pub initial_score: f64,
    pub final_score: f64,
    pub segment: Segment,
    pub computed_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ml_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
}

/// What a forecast reads of a lead that later events overwrite, as the lead
/// held it from `from` (its latest event time then) until the event at
/// `until`; kept when a forecast slot fell in between.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotSnapshot {
    pub from: Millis,
    pub until: Millis,
    pub score: Option<ScoreSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_value: Option<f64>,
}

/// The fields of [`SlotSnapshot`] as a lead held them at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldAt<'a> {
    pub score: Option<&'a ScoreSnapshot>,
    pub owner: Option<&'a str>,
    pub source: Option<&'a str>,
    pub estimated_value: Option<f64>,
}

/// Slot snapshots a lead keeps: a forecast may run this many slots behind
/// the lead's latest event and still see the lead as it was at its slot.
pub const SLOT_SNAPSHOTS_KEPT: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadState {
    pub lead_ext_id: String,
    /// When the lead was created upstream; `None` while only interactions or
    /// stage changes have been seen (a stub waiting for its LeadEvent).
    pub created_at: Option<Millis>,
    /// Latest event time applied.
    pub updated_at: Millis,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub company: Option<String>,
    pub source: Option<String>,
    pub owner: Option<String>,
    /// Event time of the assignment `owner` holds: LeadEvents and stage
    /// changes both assign owners, and the later assignment wins.
    pub owner_assigned_at: Millis,
    pub timezone: Option<String>,
    pub estimated_value: Option<f64>,
    pub probability: Option<f64>,
    /// The upstream initial score, when one was given; the rules apply otherwise.
    pub provided_initial_score: Option<f64>,
    pub consent: ConsentState,
    /// The consent ledger: every consent statement and unsubscribe applied
    /// (the same statement once), and the earliest bounce, in time order
    /// whatever order they arrived in; lines are only ever added (a bounce
    /// earlier than the one kept replaces it). `consent` is what its
    /// statements and unsubscribes add up to ([`ConsentState::from_ledger`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consent_ledger: Vec<ConsentChange>,
    /// Set by a bounce on the email channel.
    pub email_bounced_at: Option<Millis>,
    pub stage: Stage,
    pub stage_entered_at: Option<Millis>,
    pub stage_history: Vec<StageTransition>,
    pub deal_value: Option<f64>,
    pub first_contact_at: Option<Millis>,
    pub last_contact_at: Option<Millis>,
    pub interactions: BTreeMap<InteractionKind, InteractionStats>,
    pub engagement: DecayedSum,
    pub attributes: BTreeMap<String, String>,
    pub score: Option<ScoreSnapshot>,
    /// Ids of the most recent events applied, newest last, bounded by
    /// `processor.dedup_window`: a re-delivered event is recognised and skipped.
    pub recent_event_ids: VecDeque<String>,
    pub events_applied: u64,
    /// The lead as it stood just before its latest close: the point-in-time
    /// row a model trains on, with nothing known only after the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_close: Option<Box<LeadState>>,
    /// Where the lead stands in nurturing, and its next timer.
    #[serde(default, skip_serializing_if = "NurtureState::is_default")]
    pub nurture: NurtureState,
    /// What it held at the latest forecast slots, oldest first (at most
    /// [`SLOT_SNAPSHOTS_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slot_snapshots: Vec<SlotSnapshot>,
    /// When the lead was erased (GDPR): the state is then a tombstone that
    /// keeps no personal data, only what the pipeline's counts are made of
    /// (see [`LeadState::tombstone`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<Millis>,
}

impl LeadState {
    pub fn new(lead_ext_id: &str) -> Self {
        LeadState {
            lead_ext_id: lead_ext_id.to_string(),
            created_at: None,
            updated_at: 0,
            email: None,
            phone: None,
            first_name: None,
            last_name: None,
            company: None,
            source: None,
            owner: None,
            owner_assigned_at: 0,
            timezone: None,
            estimated_value: None,
            probability: None,
            provided_initial_score: None,
            consent: ConsentState::default(),
            consent_ledger: Vec::new(),
            email_bounced_at: None,
            stage: Stage::New,
            stage_entered_at: None,
            stage_history: Vec::new(),
            deal_value: None,
            first_contact_at: None,
            last_contact_at: None,
            interactions: BTreeMap::new(),
            engagement: DecayedSum::default(),
            attributes: BTreeMap::new(),
            score: None,
            recent_event_ids: VecDeque::new(),
            events_applied: 0,
            pre_close: None,
            nurture: NurtureState::default(),
            slot_snapshots: Vec::new(),
            erased_at: None,
        }
    }

    /// The lead erased at `at`: no contact data, names, company, custom
    /// attributes, consent, interactions, scores, nurturing or model row is
    /// kept. What stays is what the funnel, the analytics history and the
    /// won value already count (stage and its history, source, owner, deal
    /// value, creation time) and the recent event ids, so that a redelivered
    /// event is still recognised. `erased_at` makes later events for the lead
    /// be dropped.
    pub fn tombstone(&self, at: Millis) -> LeadState {
        LeadState {
            created_at: self.created_at,
            // Not the erasure's time: the store reads a partition's
            // event-time clock from its leads' latest event times.
            updated_at: self.updated_at,
            source: self.source.clone(),
            owner: self.owner.clone(),
            owner_assigned_at: self.owner_assigned_at,
            stage: self.stage,
            stage_entered_at: self.stage_entered_at,
            stage_history: self.stage_history.clone(),
            deal_value: self.deal_value,
            recent_event_ids: self.recent_event_ids.clone(),
            events_applied: self.events_applied,
            erased_at: Some(at),
            ..LeadState::new(&self.lead_ext_id)
        }
    }

    pub fn interaction_count(&self, kind: InteractionKind) -> u64 {
        self.interactions.get(&kind).map_or(0, |s| s.count)
    }

    /// The score the lead held at `at`: its current one if no event since
    /// has changed it, else the one kept for the slot; `None` when that is
    /// no longer known (the lead moved past more than [`SLOT_SNAPSHOTS_KEPT`]
    /// slots since, or `at` was not a slot).
    pub fn score_as_of(&self, at: Millis) -> Option<Option<&ScoreSnapshot>> {
        self.held_at(at).map(|h| h.score)
    }

    /// The score, owner, source and estimate the lead held at `at`, on the
    /// same terms as [`LeadState::score_as_of`].
    pub fn held_at(&self, at: Millis) -> Option<HeldAt<'_>> {
        if self.updated_at <= at {
            return Some(self.held_now());
        }
        self.slot_snapshots
            .iter()
            .find(|s| s.from <= at && at < s.until)
            .map(|s| HeldAt {
                score: s.score.as_ref(),
                owner: s.owner.as_deref(),
                source: s.source.as_deref(),
                estimated_value: s.estimated_value,
            })
    }

    /// [`LeadState::held_at`], or what the lead holds now once that is no
    /// longer known (it moved past more slots since than it keeps).
    pub fn held_at_or_latest(&self, at: Millis) -> HeldAt<'_> {
        self.held_at(at).unwrap_or_else(|| self.held_now())
    }

    fn held_now(&self) -> HeldAt<'_> {
        HeldAt {
            score: self.score.as_ref(),
            owner: self.owner.as_deref(),
            source: self.source.as_deref(),
            estimated_value: self.estimated_value,
        }
    }

    /// Before an event at `at` is applied: if a slot falls between the
    /// latest event time and `at`, keep what the lead holds now.
    pub(crate) fn keep_slot_snapshot(&mut self, at: Millis, slots: &ForecastSlots) {
        if self.events_applied == 0
            || at <= self.updated_at
            || slots.last_before(at) < self.updated_at
        {
            return;
        }
        if self.slot_snapshots.len() == SLOT_SNAPSHOTS_KEPT {
            self.slot_snapshots.remove(0);
        }
        self.slot_snapshots.push(SlotSnapshot {
            from: self.updated_at,
            until: at,
            score: self.score.clone(),
            owner: self.owner.clone(),
            source: self.source.clone(),
            estimated_value: self.estimated_value,
        });
    }

    pub(crate) fn has_seen(&self, event_id: &str) -> bool {
        self.recent_event_ids.iter().any(|id| id == event_id)
    }

    pub(crate) fn remember(&mut self, event_id: &str, window: usize) {
        self.recent_event_ids.push_back(event_id.to_string());
        while self.recent_event_ids.len() > window {
            self.recent_event_ids.pop_front();
        }
    }

    pub(crate) fn assign_owner(&mut self, owner: &Option<String>, at: Millis) {
        if let Some(owner) = owner {
            // Equal times fall back to the name, so no arrival order decides.
            let later = match &self.owner {
                None => true,
                Some(current) => (at, owner) > (self.owner_assigned_at, current),
            };
            if later {
                self.owner = Some(owner.clone());
                self.owner_assigned_at = at;
            }
        }
    }

    pub(crate) fn touch_contact(&mut self, at: Millis) {
        self.first_contact_at = Some(self.first_contact_at.map_or(at, |t| t.min(at)));
        self.last_contact_at = Some(self.last_contact_at.map_or(at, |t| t.max(at)));
    }

    /// The initial score as of `at`: the upstream one, or the rules'.
    pub fn initial_score(&self, rules: &RuleConfig, at: Millis) -> f64 {
        self.provided_initial_score.unwrap_or_else(|| {
            rules.score(
                &RuleInputs {
                    source: self.source.as_deref(),
                    estimated_value: self.estimated_value,
                    probability: self.probability,
                    engagement: self.engagement,
                },
                at,
            )
        })
    }
}

/// Where a lead stands in nurturing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never entered a sequence.
    #[default]
    NotEnrolled,
    Active,
    /// Stopped by the lead's or the sales team's activity; see `reason`.
    Paused,
    /// Ran out of steps.
    Completed,
    /// Closed: nurturing is over for good.
    Exited,
}

/// Why a channel can no longer be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelStop {
    pub reason: String,
    pub at: Millis,
}

/// A lead's part in one experiment, counted by `leadflow experiments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub variant: String,
    pub enrolled_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replied_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_at: Option<Millis>,
}

/// One line of the lead's nurturing history: what happened and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub at: Millis,
    pub note: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NurtureState {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// How many times the lead entered this sequence before (part of message ids).
    #[serde(default)]
    pub cycle: u32,
    /// Step offsets count from here.
    #[serde(default)]
    pub anchor: Millis,
    #[serde(default)]
    pub next_step: usize,
    /// When `next_step` fires (quiet hours and the cap already applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Millis>,
    /// Why the lead is paused, completed or out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Entries per sequence so far.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub entries: BTreeMap<String, u32>,
    /// When recent messages were sent, for the frequency cap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_sends: Vec<Millis>,
    /// Latest delivery reported sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stopped: BTreeMap<Channel, ChannelStop>,
    /// The contact a reactivation was made for: one reactivation per silence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactivated_after: Option<Millis>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub experiments: BTreeMap<String, Membership>,
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub history: VecDeque<Note>,
    /// The next instant something may happen to this lead without an input
    /// event: the due step, or the reactivation check. Copied to the store's
    /// indexed timer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<Millis>,
}

impl NurtureState {
    pub fn is_default(&self) -> bool {
        *self == NurtureState::default()
    }
}
