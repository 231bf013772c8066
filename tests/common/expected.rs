//! Analytics worked out from the input events alone, to compare with what
//! leadflow computes from the transitions it stored.

use std::collections::{BTreeMap, BTreeSet};

use leadflow::analytics::funnel::{step_of, STEPS};
use leadflow::events::{InputEvent, LeadEventKind, Stage};
use leadflow::forecast::time_to_close::{Observation, Outcome};

pub const DAY: i64 = 86_400_000;

/// Per lead created in `[from, until)` (by its earliest Created event): the
/// furthest funnel step of its distinct stage changes, and whether it was
/// lost. Then reached per step, and the lost count.
pub fn expected_funnel(events: &[InputEvent], from: i64, until: i64) -> (Vec<i64>, i64) {
    let mut created: BTreeMap<&str, i64> = BTreeMap::new();
    let mut changes: BTreeMap<&str, BTreeSet<(&str, Stage)>> = BTreeMap::new();
    for event in events {
        match event {
            InputEvent::Lead(e) if e.kind == LeadEventKind::Created => {
                let at = created.entry(&e.lead_ext_id).or_insert(e.occurred_at);
                *at = (*at).min(e.occurred_at);
            }
            InputEvent::StageChange(e) => {
                changes
                    .entry(&e.lead_ext_id)
                    .or_default()
                    .insert((&e.event_id, e.to_stage));
            }
            _ => {}
        }
    }
    let mut reached = vec![0i64; STEPS.len()];
    let mut lost = 0;
    for (lead, at) in created {
        if at < from || at >= until {
            continue;
        }
        let seen = changes.get(lead).cloned().unwrap_or_default();
        let furthest = seen
            .iter()
            .filter_map(|(_, to)| step_of(*to))
            .max()
            .unwrap_or(0);
        for r in reached.iter_mut().take(furthest + 1) {
            *r += 1;
        }
        lost += seen.iter().any(|(_, to)| *to == Stage::ClosedLost) as i64;
    }
    (reached, lost)
}

/// Time in each open stage worked out from the input: per lead its
/// creation (stage new) and its distinct stage changes in input order, each
/// stay ending at the next one or censored at the latest of them all; then
/// the Kaplan–Meier figures of those stays. (lead, stage) -> stays.
pub fn expected_stays(events: &[InputEvent]) -> BTreeMap<Stage, Vec<Observation>> {
    let mut path: BTreeMap<&str, Vec<(Stage, i64)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in events {
        match event {
            InputEvent::Lead(e) if e.kind == LeadEventKind::Created => {
                let p = path.entry(&e.lead_ext_id).or_default();
                if p.is_empty() {
                    p.push((Stage::New, e.occurred_at));
                }
            }
            InputEvent::StageChange(e) if seen.insert(e.event_id.as_str()) => {
                path.entry(&e.lead_ext_id)
                    .or_default()
                    .push((e.to_stage, e.occurred_at));
            }
            _ => {}
        }
    }
    let now = path.values().flatten().map(|(_, at)| *at).max().unwrap();
    let mut stays: BTreeMap<Stage, Vec<Observation>> = BTreeMap::new();
    for steps in path.values() {
        for (i, (stage, at)) in steps.iter().enumerate() {
            if stage.is_closed() {
                continue;
            }
            let (end, outcome) = match steps.get(i + 1) {
                Some((_, next)) => (*next, Outcome::Won),
                None => (now, Outcome::Open),
            };
            stays.entry(*stage).or_default().push(Observation {
                days: (end - at) as f64 / DAY as f64,
                outcome,
            });
        }
    }
    stays
}

/// Per owner (its latest event's) and per source (its Created event's), of
/// every created lead: (leads, won, lost, won value); and per UTC day:
/// (created, won). From the input alone.
pub type Tally = BTreeMap<String, (u64, u64, u64, f64)>;

pub fn expected_groups(events: &[InputEvent]) -> (Tally, Tally, BTreeMap<i64, (u64, u64)>) {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut source: BTreeMap<&str, &str> = BTreeMap::new();
    let mut close: BTreeMap<&str, (Stage, f64, i64)> = BTreeMap::new();
    let mut created_at: BTreeMap<&str, i64> = BTreeMap::new();
    for event in events {
        match event {
            InputEvent::Lead(e) => {
                if let Some(o) = &e.owner {
                    owner.insert(&e.lead_ext_id, o);
                }
                if e.kind == LeadEventKind::Created {
                    let at = created_at.entry(&e.lead_ext_id).or_insert(e.occurred_at);
                    *at = (*at).min(e.occurred_at);
                    if let Some(s) = &e.source {
                        source.entry(&e.lead_ext_id).or_insert(s);
                    }
                }
            }
            InputEvent::StageChange(e) => {
                if let Some(o) = &e.owner {
                    owner.insert(&e.lead_ext_id, o);
                }
                if e.to_stage.is_closed() {
                    close.entry(&e.lead_ext_id).or_insert((
                        e.to_stage,
                        e.deal_value.unwrap_or(0.0),
                        e.occurred_at,
                    ));
                }
            }
            _ => {}
        }
    }
    let (mut by_owner, mut by_source, mut daily) = (Tally::new(), Tally::new(), BTreeMap::new());
    for (lead, at) in &created_at {
        daily.entry(at.div_euclid(DAY)).or_insert((0, 0)).0 += 1;
        let outcome = close.get(lead);
        for (tally, key) in [
            (&mut by_owner, owner.get(lead).copied()),
            (&mut by_source, source.get(lead).copied()),
        ] {
            let t = tally
                .entry(key.unwrap_or("(none)").to_string())
                .or_insert((0, 0, 0, 0.0));
            t.0 += 1;
            match outcome {
                Some((Stage::ClosedWon, value, _)) => {
                    t.1 += 1;
                    t.3 += value;
                }
                Some(_) => t.2 += 1,
                None => {}
            }
        }
    }
    for (stage, _, at) in close.values() {
        if *stage == Stage::ClosedWon {
            daily.entry(at.div_euclid(DAY)).or_insert((0, 0)).1 += 1;
        }
    }
    (by_owner, by_source, daily)
}

/// Per open stage, the leads created before `end` that were in it then:
/// each in the stage of its latest distinct stage change before `end`.
pub fn open_at(events: &[InputEvent], end: i64) -> BTreeMap<String, u64> {
    let mut stage: BTreeMap<&str, (i64, Stage)> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in events {
        match event {
            InputEvent::Lead(e) if e.kind == LeadEventKind::Created && e.occurred_at < end => {
                stage
                    .entry(&e.lead_ext_id)
                    .or_insert((e.occurred_at, Stage::New));
            }
            InputEvent::StageChange(e) if e.occurred_at < end && seen.insert(&e.event_id) => {
                let s = stage
                    .entry(&e.lead_ext_id)
                    .or_insert((e.occurred_at, e.to_stage));
                if e.occurred_at >= s.0 {
                    *s = (e.occurred_at, e.to_stage);
                }
            }
            _ => {}
        }
    }
    let mut open = BTreeMap::new();
    for (_, s) in stage.values().filter(|(_, s)| !s.is_closed()) {
        *open.entry(s.as_str().to_string()).or_default() += 1;
    }
    open
}
