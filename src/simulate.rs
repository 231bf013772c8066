//! Deterministic synthetic traffic for the three input topics.
//!
//! Every lead gets a hidden quality q in (0, 1), drawn from its source,
//! industry and company size plus noise. q drives how often the lead engages
//! (opens, clicks, visits, replies), how fast sales reaches it, and how far it
//! gets through the pipeline, so closed_won vs closed_lost is learnable from
//! the features a real system would see — but not trivially (the
//! rep-entered probability is only a noisy estimate of q).
//!
//! The same parameters always give the same events in the same order: one
//! ChaCha stream per lead, seeded from (seed, lead index).
//!
//! One file past 600 lines on purpose: the generator is one model of lead
//! behaviour (quality, sources, journeys, stage paths); split, its
//! calibration constants would be read apart from what they calibrate.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::events::{
    Consent, InputEvent, InteractionEvent, InteractionKind, LeadEvent, LeadEventKind, Millis,
    Stage, StageChangeEvent, MILLIS_PER_DAY,
};

const HOUR: Millis = 3_600_000;
const MINUTE: Millis = 60_000;

#[derive(Debug, Clone, PartialEq)]
pub struct SimulationParams {
    pub seed: u64,
    pub leads: u32,
    pub days: u32,
    /// First instant of the simulated period (UTC millis).
    pub start: Millis,
    /// Share of new leads per source, replacing the built-in mix (relative
    /// weights; empty: the built-in mix). Shifting it is how tests simulate drift.
    pub source_shares: BTreeMap<String, f64>,
    /// How much more often a lead arrives on the last day than on the
    /// first (0: evenly; 1: twice as often), the trend a lead-volume
    /// forecast has to follow.
    pub inflow_growth: f64,
}

impl SimulationParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.leads == 0 {
            return Err("--leads must be at least 1".into());
        }
        if self.leads > 50_000_000 {
            return Err(format!("--leads {} is more than 50,000,000", self.leads));
        }
        if self.days == 0 {
            return Err("--days must be at least 1".into());
        }
        if self.days > 3_650 {
            return Err(format!("--days {} is more than ten years", self.days));
        }
        if self.start < 0 {
            return Err("--start must not be before 1970".into());
        }
        for (source, share) in &self.source_shares {
            if !SOURCES.iter().any(|s| s.name == source) {
                let known: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
                return Err(format!(
                    "--source-mix: unknown source `{source}` (known: {})",
                    known.join(", ")
                ));
            }
            if !(share.is_finite() && *share >= 0.0) {
                return Err(format!(
                    "--source-mix: share of {source} must be zero or more"
                ));
            }
        }
        if !(self.inflow_growth.is_finite() && (0.0..=100.0).contains(&self.inflow_growth)) {
            return Err(format!(
                "--inflow-growth {} must be between 0 and 100",
                self.inflow_growth
            ));
        }
        if !self.source_shares.is_empty() && self.source_shares.values().sum::<f64>() <= 0.0 {
            return Err("--source-mix: the shares add up to zero".into());
        }
        Ok(())
    }

    pub fn end(&self) -> Millis {
        self.start + self.days as Millis * MILLIS_PER_DAY
    }
}

struct SourceProfile {
    name: &'static str,
    prefix: &'static str,
    share: f64,
    quality: f64,
}

const SOURCES: &[SourceProfile] = &[
    SourceProfile {
        name: "web",
        prefix: "WEB",
        share: 0.34,
        quality: 0.0,
    },
    SourceProfile {
        name: "paid_search",
        prefix: "PPC",
        share: 0.20,
        quality: -0.35,
    },
    SourceProfile {
        name: "social",
        prefix: "SOC",
        share: 0.14,
        quality: -0.6,
    },
    SourceProfile {
        name: "referral",
        prefix: "REF",
        share: 0.12,
        quality: 0.9,
    },
    SourceProfile {
        name: "event",
        prefix: "EVT",
        share: 0.10,
        quality: 0.45,
    },
    SourceProfile {
        name: "partner",
        prefix: "PTR",
        share: 0.10,
        quality: 0.6,
    },
];

const INDUSTRIES: &[(&str, f64)] = &[
    ("software", 0.4),
    ("finance", 0.3),
    ("manufacturing", 0.0),
    ("retail", -0.3),
    ("healthcare", 0.15),
    ("education", -0.45),
];

/// (label, quality effect, typical deal value)
const COMPANY_SIZES: &[(&str, f64, f64)] = &[
    ("1-10", -0.5, 4_000.0),
    ("11-50", -0.1, 12_000.0),
    ("51-200", 0.2, 30_000.0),
    ("201-1000", 0.35, 60_000.0),
    ("1000+", 0.25, 120_000.0),
];

const COUNTRIES: &[(&str, &str, &str)] = &[
    ("ES", "Europe/Madrid", "+34"),
    ("MX", "America/Mexico_City", "+52"),
    ("US", "America/New_York", "+1"),
    ("GB", "Europe/London", "+44"),
    ("AR", "America/Argentina/Buenos_Aires", "+54"),
    ("DE", "Europe/Berlin", "+49"),
];

const FIRST_NAMES: &[&str] = &[
    "Juan", "María", "Lucía", "Carlos", "Ana", "Pedro", "Sofía", "Diego", "Laura", "Javier",
    "Elena", "Pablo", "Carmen", "Miguel", "Isabel", "Andrés", "Valeria", "Jorge", "Paula", "Hugo",
];

const LAST_NAMES: &[&str] = &[
    "García",
    "Martínez",
    "López",
    "Sánchez",
    "Pérez",
    "Gómez",
    "Fernández",
    "Díaz",
    "Ruiz",
    "Moreno",
    "Álvarez",
    "Romero",
    "Navarro",
    "Torres",
    "Domínguez",
    "Vázquez",
];

const COMPANY_WORDS: &[&str] = &[
    "Acme", "Nova", "Iberia", "Atlas", "Sol", "Vértice", "Delta", "Orbe", "Cumbre", "Faro", "Nexo",
    "Prisma", "Aurora", "Brisa", "Cénit",
];

const COMPANY_SUFFIXES: &[&str] = &["S.L.", "S.A.", "Tech", "Group", "Labs", "Consulting"];

const OWNERS: &[&str] = &[
    "rep-01", "rep-02", "rep-03", "rep-04", "rep-05", "rep-06", "rep-07", "rep-08",
];

/// Per-lead event builder: numbers the lead's events and keeps them in the window.
struct LeadTrack {
    lead_ext_id: String,
    event_prefix: String,
    owner: String,
    end: Millis,
    seq: u32,
    events: Vec<(Millis, u32, InputEvent)>,
}

impl LeadTrack {
    fn next_event_id(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}", self.event_prefix, self.seq)
    }

    fn push(&mut self, at: Millis, event: InputEvent) {
        if at < self.end {
            self.events.push((at, self.seq, event));
        }
    }

    fn interaction(
        &mut self,
        at: Millis,
        kind: InteractionKind,
        channel: &str,
        actor_is_owner: bool,
    ) {
        let event_id = self.next_event_id();
        let actor = if actor_is_owner {
            self.owner.clone()
        } else {
            "lead".to_string()
        };
        let event = InputEvent::Interaction(InteractionEvent {
            event_id,
            lead_ext_id: self.lead_ext_id.clone(),
            occurred_at: at,
            kind,
            channel: Some(channel.to_string()),
            actor: Some(actor),
            attributes: BTreeMap::new(),
        });
        self.push(at, event);
    }

    fn stage(&mut self, at: Millis, from: Stage, to: Stage, deal_value: Option<f64>) {
        let event_id = self.next_event_id();
        let event = InputEvent::StageChange(StageChangeEvent {
            event_id,
            lead_ext_id: self.lead_ext_id.clone(),
            occurred_at: at,
            from_stage: Some(from),
            to_stage: to,
            owner: Some(self.owner.clone()),
            deal_value,
        });
        self.push(at, event);
    }
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; deterministic given the stream.
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -mean * rng.random::<f64>().max(1e-12).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A unique, random-looking 6-character base-36 id for lead `index`:
/// multiplication by a unit modulo 36^6 is a bijection.
fn lead_code(index: u32) -> String {
    const MODULUS: u64 = 2_176_782_336; // 36^6
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut n = (index as u64 * 1_103_515_245 + 12_345) % MODULUS;
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out.to_vec()).expect("ASCII")
}

fn days(d: f64) -> Millis {
    (d * MILLIS_PER_DAY as f64) as Millis
}

/// Generates one lead's whole history within the window.
fn simulate_lead(params: &SimulationParams, index: u32) -> Vec<(Millis, u32, InputEvent)> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        params.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );

    let share = |s: &SourceProfile| {
        if params.source_shares.is_empty() {
            s.share
        } else {
            params.source_shares.get(s.name).copied().unwrap_or(0.0)
        }
    };
    let roll: f64 = rng.random::<f64>() * SOURCES.iter().map(share).sum::<f64>();
    let mut acc = 0.0;
    let source = SOURCES
        .iter()
        .find(|s| {
            acc += share(s);
            roll < acc
        })
        .unwrap_or(&SOURCES[0]);
    let (industry, industry_effect) = *pick(&mut rng, INDUSTRIES);
    let (size, size_effect, typical_value) = *pick(&mut rng, COMPANY_SIZES);
    let (country, timezone, phone_prefix) = *pick(&mut rng, COUNTRIES);
    let quality =
        sigmoid(-0.9 + source.quality + industry_effect + size_effect + 0.8 * normal(&mut rng));

    // Arrival: uniform over the window (thinned towards its start when the
    // inflow grows; no extra draw otherwise, so those streams stay as they
    // were), thinned on weekends, in office hours.
    let created = loop {
        let day = rng.random_range(0..params.days) as Millis;
        let growth = params.inflow_growth;
        if growth > 0.0
            && rng.random::<f64>() * (1.0 + growth) > 1.0 + growth * day as f64 / params.days as f64
        {
            continue;
        }
        let weekday = (params.start / MILLIS_PER_DAY + day + 4) % 7; // 0 = Sunday
        let weekend = weekday == 0 || weekday == 6;
        if !weekend || rng.random::<f64>() < 0.4 {
            let hour = rng.random_range(7..21) as Millis;
            let minute = rng.random_range(0..60) as Millis;
            break params.start + day * MILLIS_PER_DAY + hour * HOUR + minute * MINUTE;
        }
    };

    let first = *pick(&mut rng, FIRST_NAMES);
    let last = *pick(&mut rng, LAST_NAMES);
    let company = format!(
        "{} {}",
        pick(&mut rng, COMPANY_WORDS),
        pick(&mut rng, COMPANY_SUFFIXES)
    );
    let owner = pick(&mut rng, OWNERS).to_string();
    let lead_ext_id = format!("{}-{}", source.prefix, lead_code(index));
    let email_local: String = format!("{}.{}", first, last)
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'á' => 'a',
            'é' => 'e',
            'í' => 'i',
            'ó' => 'o',
            'ú' => 'u',
            'ñ' => 'n',
            other => other,
        })
        .collect();
    let email = format!(
        "{email_local}.{}@example.com",
        lead_code(index).to_lowercase()
    );
    let phone = format!("{phone_prefix}6{:08}", rng.random_range(0..100_000_000u32));
    let estimated_value = (typical_value * (0.4 * normal(&mut rng)).exp()).round();
    let rep_probability =
        ((quality + 0.18 * normal(&mut rng)).clamp(0.02, 0.95) * 20.0).round() / 20.0;
    let email_consent = rng.random::<f64>() < 0.88;
    let sms_consent = rng.random::<f64>() < 0.45;
    let upstream_score = (rng.random::<f64>() < 0.3)
        .then(|| ((quality * 70.0 + 15.0 + 10.0 * normal(&mut rng)).clamp(0.0, 100.0)).round());

    let mut track = LeadTrack {
        lead_ext_id: lead_ext_id.clone(),
        event_prefix: format!("sim-{:x}-{index}", params.seed),
        owner: owner.clone(),
        end: params.end(),
        seq: 0,
        events: Vec::new(),
    };

    let mut attributes = BTreeMap::new();
    attributes.insert("industry".to_string(), industry.to_string());
    attributes.insert("company_size".to_string(), size.to_string());
    attributes.insert("country".to_string(), country.to_string());
    let created_event = LeadEvent {
        event_id: track.next_event_id(),
        lead_ext_id: lead_ext_id.clone(),
        kind: LeadEventKind::Created,
        occurred_at: created,
        email: Some(email),
        phone: Some(phone),
        first_name: Some(first.to_string()),
        last_name: Some(last.to_string()),
        company: Some(company),
        source: Some(source.name.to_string()),
        owner: Some(owner.clone()),
        estimated_value: Some(estimated_value),
        probability: None,
        initial_score: upstream_score,
        consent: Some(Consent {
            email: Some(email_consent),
            sms: Some(sms_consent),
            recorded_at: created,
            source: format!("web_form:{}", source.name),
        }),
        timezone: Some(timezone.to_string()),
        attributes,
    };
    track.push(created, InputEvent::Lead(created_event));

    // The sales process: each stage is reached after a delay, or the lead
    // is lost, with odds that rise with quality.
    let mut stage = Stage::New;
    let mut t = created;
    let mut closed_at: Option<Millis> = None;
    let first_touch = t + days(exponential(&mut rng, 0.3 + 2.5 * (1.0 - quality)));
    let contact_kind = if rng.random::<f64>() < 0.6 {
        InteractionKind::Call
    } else {
        InteractionKind::ManualContact
    };
    track.interaction(first_touch, contact_kind, "phone", true);
    track.stage(first_touch + 5 * MINUTE, stage, Stage::Contacted, None);
    stage = Stage::Contacted;
    t = first_touch + 5 * MINUTE;

    // The rep's estimate arrives once they have spoken to the lead.
    let update = LeadEvent {
        probability: Some(rep_probability),
        ..LeadEvent::update(track.next_event_id(), lead_ext_id.clone(), t + HOUR)
    };
    track.push(t + HOUR, InputEvent::Lead(update));

    let ladder: [(Stage, f64, f64); 4] = [
        (Stage::Qualified, 0.35 + 0.55 * quality, 4.0),
        (Stage::Proposal, 0.5 + 0.4 * quality, 5.0),
        (Stage::Negotiation, 0.6 + 0.3 * quality, 4.0),
        (Stage::ClosedWon, 0.25 + 0.7 * quality, 6.0),
    ];
    for (next, odds, mean_days) in ladder {
        let at = t + days(exponential(&mut rng, mean_days)) + HOUR;
        if next == Stage::Qualified || next == Stage::Proposal {
            // A meeting usually precedes qualification and proposals.
            if rng.random::<f64>() < 0.4 + 0.5 * quality {
                track.interaction(
                    at - 30 * MINUTE,
                    InteractionKind::Meeting,
                    "in_person",
                    true,
                );
            }
        }
        if rng.random::<f64>() < odds {
            let value = (next == Stage::ClosedWon)
                .then(|| (estimated_value * (0.2 * normal(&mut rng)).exp()).round());
            track.stage(at, stage, next, value);
            stage = next;
            t = at;
            if next == Stage::ClosedWon {
                closed_at = Some(at);
            }
        } else {
            // Some stall without ever being closed; most are marked lost.
            if rng.random::<f64>() < 0.8 {
                track.stage(at, stage, Stage::ClosedLost, None);
                closed_at = Some(at);
            }
            break;
        }
    }

    // Engagement until the lead closes (plus a little after) or the window ends.
    let engagement_end = closed_at
        .map_or(params.end(), |c| c + days(3.0))
        .min(params.end());
    let mut email_ok = email_consent;
    let mut day_start = created - created % MILLIS_PER_DAY + MILLIS_PER_DAY;
    let fade = |d: Millis| 0.5f64.powf(((d - created) as f64 / MILLIS_PER_DAY as f64) / 20.0);
    while day_start < engagement_end {
        let f = fade(day_start);
        let at = |rng: &mut ChaCha8Rng| day_start + rng.random_range(8 * HOUR..22 * HOUR);
        if rng.random::<f64>() < (0.05 + 0.25 * quality) * f {
            let when = at(&mut rng);
            track.interaction(when, InteractionKind::WebVisit, "web", false);
            if rng.random::<f64>() < 0.15 + 0.3 * quality {
                track.interaction(when + 3 * MINUTE, InteractionKind::FormSubmit, "web", false);
            }
        }
        if email_ok && rng.random::<f64>() < (0.08 + 0.3 * quality) * f {
            let when = at(&mut rng);
            track.interaction(when, InteractionKind::EmailOpen, "email", false);
            if rng.random::<f64>() < 0.2 + 0.4 * quality {
                track.interaction(when + MINUTE, InteractionKind::EmailClick, "email", false);
            }
            if rng.random::<f64>() < 0.03 + 0.12 * quality {
                track.interaction(
                    when + 30 * MINUTE,
                    InteractionKind::EmailReply,
                    "email",
                    false,
                );
            }
            if rng.random::<f64>() < 0.012 * (1.0 - quality) {
                track.interaction(
                    when + 2 * MINUTE,
                    InteractionKind::Unsubscribe,
                    "email",
                    false,
                );
                email_ok = false;
            }
        }
        if sms_consent && rng.random::<f64>() < 0.01 + 0.03 * quality * f {
            track.interaction(at(&mut rng), InteractionKind::SmsReply, "sms", false);
        }
        if closed_at.is_none_or(|c| day_start < c) && rng.random::<f64>() < 0.03 + 0.04 * quality {
            track.interaction(at(&mut rng), InteractionKind::Call, "phone", true);
        }
        if email_ok && rng.random::<f64>() < 0.0015 {
            track.interaction(at(&mut rng), InteractionKind::Bounce, "email", false);
            email_ok = false;
        }
        day_start += MILLIS_PER_DAY;
    }
    track.events
}

/// One lead's events in event-time order (ties: the lead's own sequence):
/// what a benchmark needs to build a lead's state without the whole stream.
pub fn lead_events(params: &SimulationParams, index: u32) -> Vec<InputEvent> {
    let mut events = simulate_lead(params, index);
    events.sort_by_key(|(at, seq, _)| (*at, *seq));
    events.into_iter().map(|(_, _, e)| e).collect()
}

/// The whole simulated stream, ordered by event time (ties: lead, then the
/// lead's own sequence), which is also the order `simulate` publishes in.
pub fn generate(params: &SimulationParams) -> Vec<InputEvent> {
    let mut all: Vec<(Millis, u32, u32, InputEvent)> = Vec::new();
    for index in 0..params.leads {
        for (at, seq, event) in simulate_lead(params, index) {
            all.push((at, index, seq, event));
        }
    }
    all.sort_by_key(|(at, index, seq, _)| (*at, *index, *seq));
    all.into_iter().map(|(_, _, _, e)| e).collect()
}

/// Writes a stream as JSON Lines, one tagged InputEvent per line: the file
/// `run --from-file` replays and benchmarks read.
pub fn write_stream(path: &std::path::Path, events: &[InputEvent]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for event in events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a stream written by [`write_stream`]; a bad line is an error with its number.
pub fn read_stream(path: &std::path::Path) -> std::io::Result<Vec<InputEvent>> {
    use std::io::BufRead;
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut events = Vec::new();
    for (i, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), i + 1),
            )
        })?;
        events.push(event);
    }
    Ok(events)
}

/// `--source-mix`: `SOURCE=WEIGHT` pairs, relative weights.
pub fn parse_source_mix(pairs: &[String]) -> Result<BTreeMap<String, f64>, String> {
    let mut shares = BTreeMap::new();
    for pair in pairs {
        let (source, weight) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not SOURCE=WEIGHT"))?;
        let weight: f64 = weight
            .trim()
            .parse()
            .map_err(|_| format!("weight `{weight}` of {source} is not a number"))?;
        shares.insert(source.trim().to_string(), weight);
    }
    Ok(shares)
}

/// `--start`: a day (YYYY-MM-DD, midnight UTC) or an RFC 3339 instant.
pub fn parse_start(raw: &str) -> Result<Millis, String> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis());
    }
    crate::events::timestamp::parse_rfc3339(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SimulationParams {
        SimulationParams {
            inflow_growth: 0.0,
            source_shares: Default::default(),
            seed: 7,
            leads: 300,
            days: 60,
            start: 1_767_225_600_000,
        }
    }

    #[test]
    fn same_parameters_give_the_same_stream() {
        assert_eq!(generate(&params()), generate(&params()));
        let other = SimulationParams {
            seed: 8,
            ..params()
        };
        assert_ne!(generate(&params()), generate(&other));
    }

    #[test]
    fn growing_inflow_brings_more_leads_late_than_early() {
        let created_in_second_half = |growth: f64| {
            let p = SimulationParams {
                inflow_growth: growth,
                leads: 3000,
                ..params()
            };
            let middle = p.start + p.days as Millis / 2 * MILLIS_PER_DAY;
            generate(&p)
                .iter()
                .filter(|e| matches!(e, InputEvent::Lead(l) if l.kind == LeadEventKind::Created))
                .filter(|e| e.occurred_at() >= middle)
                .count() as f64
                / 3000.0
        };
        let even = created_in_second_half(0.0);
        assert!((0.46..0.54).contains(&even), "{even}");
        // Density 1 + 2t over t in [0, 1]: 1.25 of 2 in the second half.
        let growing = created_in_second_half(2.0);
        assert!((0.59..0.66).contains(&growing), "{growing}");
        assert!(SimulationParams {
            inflow_growth: -1.0,
            ..params()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn stream_is_time_ordered_and_inside_the_window() {
        let p = params();
        let events = generate(&p);
        assert!(events
            .windows(2)
            .all(|w| w[0].occurred_at() <= w[1].occurred_at()));
        assert!(events
            .iter()
            .all(|e| e.occurred_at() >= p.start && e.occurred_at() < p.end()));
        assert!(events.iter().all(|e| e.validate().is_ok()));
        let ids: std::collections::HashSet<&str> =
            events.iter().map(InputEvent::event_id).collect();
        assert_eq!(ids.len(), events.len(), "event ids are unique");
    }

    #[test]
    fn lead_codes_are_unique() {
        let codes: std::collections::HashSet<String> = (0..200_000).map(lead_code).collect();
        assert_eq!(codes.len(), 200_000);
    }

    #[test]
    fn wins_depend_on_hidden_quality_through_sources() {
        let p = SimulationParams {
            inflow_growth: 0.0,
            source_shares: Default::default(),
            seed: 1,
            leads: 4_000,
            days: 120,
            start: 1_767_225_600_000,
        };
        let mut won: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for e in generate(&p) {
            if let InputEvent::StageChange(s) = e {
                if s.to_stage.is_closed() {
                    let prefix = s.lead_ext_id[..3].to_string();
                    let entry = won.entry(prefix).or_default();
                    entry.1 += 1;
                    if s.to_stage == Stage::ClosedWon {
                        entry.0 += 1;
                    }
                }
            }
        }
        let rate = |p: &str| {
            let (w, n) = won[p];
            w as f64 / n as f64
        };
        assert!(
            rate("REF") > rate("SOC") + 0.1,
            "referral {} vs social {}",
            rate("REF"),
            rate("SOC")
        );
    }

    #[test]
    fn source_mix_and_start_are_parsed_or_refused_with_the_reason() {
        let mix = parse_source_mix(&["social=3".into(), " paid_search = 1.5".into()]).unwrap();
        assert_eq!(
            mix,
            BTreeMap::from([("social".into(), 3.0), ("paid_search".into(), 1.5)])
        );
        assert!(parse_source_mix(&["social".into()])
            .unwrap_err()
            .contains("SOURCE=WEIGHT"));
        assert!(parse_source_mix(&["social=lots".into()])
            .unwrap_err()
            .contains("`lots`"));
        assert_eq!(parse_start("2026-09-01"), Ok(1_788_220_800_000));
        assert_eq!(parse_start("2026-09-01T00:00:01Z"), Ok(1_788_220_801_000));
        assert!(parse_start("yesterday").is_err());
    }
}
