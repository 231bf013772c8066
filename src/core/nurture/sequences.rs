//! The nurturing sequences file (`config/sequences.toml`): one sequence per
//! segment plus a reactivation sequence, each a list of timed steps, or a
//! set of weighted variants of such lists when the sequence is an A/B test.
//!
//! The file is checked completely at start-up. Every error names the file,
//! the line and the reason, so an operator can fix it without guessing; a
//! file that parses but says something impossible (an unknown channel, a
//! negative offset, the same step twice) is refused, never "repaired".
//!
//! One file past 600 lines on purpose: the file format, its parser and every
//! check the parser makes, with the tests of each check (about 120 lines).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::events::{Channel, InteractionKind, Millis, Segment, Stage};

/// The sequences shipped with leadflow; used when `nurture.sequences_file` is unset.
pub const BUILT_IN: &str = include_str!("../../../config/sequences.toml");
pub const BUILT_IN_NAME: &str = "config/sequences.toml (built in)";

const HOUR: Millis = 3_600_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SequenceError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// What starts a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Leads enter it when their score puts them in this segment.
    Segment(Segment),
    /// Leads enter it after `nurture.reactivation_after_days` without contact.
    Reactivation,
}

/// Conditions a step needs at the time it is due; a step whose conditions
/// do not hold is skipped (and the skip noted in the lead's history).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// The lead's stage must be one of these.
    pub stage_in: Vec<Stage>,
    pub min_score: Option<f64>,
    pub max_score: Option<f64>,
    /// The lead must have had none of these interactions since it entered the sequence.
    pub without: Vec<InteractionKind>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique within the sequence; part of the message id (defaults to the template).
    pub id: String,
    /// Time after enrolment.
    pub offset: Millis,
    pub channel: Channel,
    pub template: String,
    pub when: Conditions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// `None` for a sequence that is not an experiment.
    pub name: Option<String>,
    pub weight: u32,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub name: String,
    pub trigger: Trigger,
    /// Set when the sequence has variants: the experiment's name.
    pub experiment: Option<String>,
    pub variants: Vec<Variant>,
}

impl Sequence {
    /// The variant a lead gets: a stable hash of the experiment name and the
    /// lead id picks a point in the weights, so the same lead always gets the
    /// same variant, on every instance, in every replay.
    pub fn variant_for(&self, lead_ext_id: &str) -> &Variant {
        let Some(experiment) = &self.experiment else {
            return &self.variants[0];
        };
        let total: u64 = self.variants.iter().map(|v| v.weight as u64).sum();
        let mut point = stable_hash(experiment, lead_ext_id) % total;
        for variant in &self.variants {
            if point < variant.weight as u64 {
                return variant;
            }
            point -= variant.weight as u64;
        }
        unreachable!("the point lies below the total weight")
    }

    pub fn variant_named(&self, name: Option<&str>) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name.as_deref() == name)
    }
}

/// 64 bits of SHA-1 (through UUID v5) over the experiment and the lead id:
/// uniform, and fixed by a published algorithm rather than by a library's
/// internal hasher, so assignments never change with an upgrade.
pub fn stable_hash(experiment: &str, lead_ext_id: &str) -> u64 {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c65_6164_666c_6f77_0000_0000_0000_0ab7);
    let id = uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{experiment}\u{1f}{lead_ext_id}").as_bytes(),
    );
    (id.as_u128() >> 64) as u64
}

/// The checked contents of a sequences file.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSet {
    pub sequences: Vec<Sequence>,
    /// Where the set was read from, for messages.
    pub origin: String,
}

impl SequenceSet {
    pub fn built_in() -> SequenceSet {
        SequenceSet::parse(BUILT_IN, BUILT_IN_NAME).expect("the built-in sequences file is valid")
    }

    pub fn load(path: &Path) -> Result<SequenceSet, SequenceError> {
        let text = std::fs::read_to_string(path).map_err(|e| SequenceError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        SequenceSet::parse(&text, &path.display().to_string())
    }

    pub fn get(&self, name: &str) -> Option<&Sequence> {
        self.sequences.iter().find(|s| s.name == name)
    }

    pub fn for_segment(&self, segment: Segment) -> Option<&Sequence> {
        self.sequences
            .iter()
            .find(|s| s.trigger == Trigger::Segment(segment))
    }

    pub fn reactivation(&self) -> Option<&Sequence> {
        self.sequences
            .iter()
            .find(|s| s.trigger == Trigger::Reactivation)
    }

    /// Experiment name → its variants in file order (the first is the control).
    pub fn experiments(&self) -> BTreeMap<String, Vec<String>> {
        self.sequences
            .iter()
            .filter_map(|s| {
                let names = s.variants.iter().filter_map(|v| v.name.clone()).collect();
                s.experiment.clone().map(|e| (e, names))
            })
            .collect()
    }

    pub fn parse(text: &str, file: &str) -> Result<SequenceSet, SequenceError> {
        let at = |span: std::ops::Range<usize>, message: String| SequenceError {
            file: file.to_string(),
            line: line_of(text, span.start),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            SequenceError {
                file: file.to_string(),
                line,
                message: e.message().trim().to_string(),
            }
        })?;
        if raw.sequence.is_empty() {
            return Err(at(
                0..0,
                "no [[sequence]] is defined (set nurture.enabled = false to turn nurturing off)"
                    .into(),
            ));
        }
        let mut sequences = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut triggers: BTreeMap<String, usize> = BTreeMap::new();
        let mut experiments: BTreeMap<String, usize> = BTreeMap::new();
        for spanned in &raw.sequence {
            let seq = spanned.get_ref();
            let line = line_of(text, spanned.span().start);
            let name = seq.name.get_ref().trim().to_string();
            check_identifier(&name)
                .map_err(|m| at(seq.name.span(), format!("sequence name: {m}")))?;
            if let Some(first) = names.insert(name.clone(), line) {
                return Err(at(
                    seq.name.span(),
                    format!("sequence `{name}` is defined twice (first at line {first})"),
                ));
            }
            let trigger = match (&seq.segment, seq.reactivation) {
                (Some(segment), None | Some(false)) => {
                    let parsed: Segment = segment.get_ref().parse().map_err(|e: String| {
                        at(segment.span(), format!("sequence `{name}`: {e}"))
                    })?;
                    Trigger::Segment(parsed)
                }
                (None, Some(true)) => Trigger::Reactivation,
                (Some(segment), Some(true)) => {
                    return Err(at(
                        segment.span(),
                        format!("sequence `{name}` has both a segment and reactivation = true; it is one or the other"),
                    ))
                }
                (None, _) => {
                    return Err(at(
                        spanned.span(),
                        format!("sequence `{name}` needs `segment = \"...\"` or `reactivation = true`"),
                    ))
                }
            };
            let trigger_key = match trigger {
                Trigger::Segment(s) => format!("segment {s}"),
                Trigger::Reactivation => "reactivation".into(),
            };
            if let Some(first) = triggers.insert(trigger_key.clone(), line) {
                return Err(at(
                    spanned.span(),
                    format!("sequence `{name}`: another sequence (line {first}) already serves {trigger_key}; one sequence each"),
                ));
            }
            let (experiment, variants) = match (&seq.steps, &seq.variant) {
                (Some(steps), None) => {
                    if let Some(e) = &seq.experiment {
                        return Err(at(
                            e.span(),
                            format!("sequence `{name}` names an experiment but has no [[sequence.variant]]"),
                        ));
                    }
                    let steps = parse_steps(steps, &name, text, file, line)?;
                    (
                        None,
                        vec![Variant {
                            name: None,
                            weight: 1,
                            steps,
                        }],
                    )
                }
                (None, Some(raw_variants)) => {
                    let experiment = seq
                        .experiment
                        .as_ref()
                        .map(|e| e.get_ref().trim().to_string())
                        .unwrap_or_else(|| name.clone());
                    check_identifier(&experiment)
                        .map_err(|m| at(spanned.span(), format!("experiment name: {m}")))?;
                    if let Some(first) = experiments.insert(experiment.clone(), line) {
                        return Err(at(
                            spanned.span(),
                            format!("experiment `{experiment}` is already run by the sequence at line {first}"),
                        ));
                    }
                    if raw_variants.len() < 2 {
                        return Err(at(
                            spanned.span(),
                            format!("sequence `{name}`: an experiment needs at least two variants"),
                        ));
                    }
                    let mut variants = Vec::new();
                    let mut variant_names: BTreeMap<String, usize> = BTreeMap::new();
                    for rv in raw_variants {
                        let v = rv.get_ref();
                        let vname = v.name.get_ref().trim().to_string();
                        check_identifier(&vname).map_err(|m| {
                            at(v.name.span(), format!("sequence `{name}`: variant name: {m}"))
                        })?;
                        if let Some(first) =
                            variant_names.insert(vname.clone(), line_of(text, v.name.span().start))
                        {
                            return Err(at(
                                v.name.span(),
                                format!("sequence `{name}`: variant `{vname}` is defined twice (first at line {first})"),
                            ));
                        }
                        let weight = *v.weight.get_ref();
                        if !(1..=1_000_000).contains(&weight) {
                            return Err(at(
                                v.weight.span(),
                                format!("sequence `{name}`, variant `{vname}`: weight {weight} is outside 1..=1000000"),
                            ));
                        }
                        let steps = parse_steps(
                            &v.steps,
                            &format!("{name}/{vname}"),
                            text,
                            file,
                            line_of(text, rv.span().start),
                        )?;
                        variants.push(Variant {
                            name: Some(vname),
                            weight: weight as u32,
                            steps,
                        });
                    }
                    (Some(experiment), variants)
                }
                (Some(_), Some(_)) => {
                    return Err(at(
                        spanned.span(),
                        format!("sequence `{name}` has both `steps` and [[sequence.variant]]; put the steps in the variants"),
                    ))
                }
                (None, None) => {
                    return Err(at(
                        spanned.span(),
                        format!("sequence `{name}` has no steps"),
                    ))
                }
            };
            sequences.push(Sequence {
                name,
                trigger,
                experiment,
                variants,
            });
        }
        Ok(SequenceSet {
            sequences,
            origin: file.to_string(),
        })
    }
}

fn parse_steps(
    raw: &[Spanned<RawStep>],
    sequence: &str,
    text: &str,
    file: &str,
    owner_line: usize,
) -> Result<Vec<Step>, SequenceError> {
    let at = |span: std::ops::Range<usize>, message: String| SequenceError {
        file: file.to_string(),
        line: line_of(text, span.start),
        message: format!("sequence `{sequence}`: {message}"),
    };
    if raw.is_empty() {
        return Err(SequenceError {
            file: file.to_string(),
            line: owner_line,
            message: format!("sequence `{sequence}` has an empty list of steps"),
        });
    }
    let mut steps: Vec<Step> = Vec::new();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut slots: BTreeMap<(Millis, Channel), usize> = BTreeMap::new();
    for spanned in raw {
        let s = spanned.get_ref();
        let line = line_of(text, spanned.span().start);
        let offset = match (&s.day, &s.hours) {
            (Some(day), None) => {
                let d = *day.get_ref();
                if d < 0 {
                    return Err(at(day.span(), format!("day offset {d} is negative")));
                }
                if d > 3_650 {
                    return Err(at(
                        day.span(),
                        format!("day offset {d} is more than ten years"),
                    ));
                }
                d * 24 * HOUR
            }
            (None, Some(hours)) => {
                let h = *hours.get_ref();
                if h < 0 {
                    return Err(at(hours.span(), format!("hour offset {h} is negative")));
                }
                if h > 87_600 {
                    return Err(at(
                        hours.span(),
                        format!("hour offset {h} is more than ten years"),
                    ));
                }
                h * HOUR
            }
            (Some(_), Some(_)) => {
                return Err(at(
                    spanned.span(),
                    "a step has either `day` or `hours`, not both".into(),
                ))
            }
            (None, None) => {
                return Err(at(
                    spanned.span(),
                    "a step needs its offset: `day = N` or `hours = N` after enrolment".into(),
                ))
            }
        };
        let channel: Channel = s.channel.get_ref().parse().map_err(|_| {
            at(
                s.channel.span(),
                format!(
                    "unknown channel `{}` (known: email, sms)",
                    s.channel.get_ref()
                ),
            )
        })?;
        let template = s.template.get_ref().trim().to_string();
        check_identifier(&template).map_err(|m| at(s.template.span(), format!("template: {m}")))?;
        let id = match &s.id {
            Some(id) => {
                let id_text = id.get_ref().trim().to_string();
                check_identifier(&id_text).map_err(|m| at(id.span(), format!("step id: {m}")))?;
                id_text
            }
            None => template.clone(),
        };
        if let Some(first) = ids.insert(id.clone(), line) {
            return Err(at(
                spanned.span(),
                format!("duplicate step `{id}` (first at line {first}); give repeated templates distinct `id`s"),
            ));
        }
        if let Some(first) = slots.insert((offset, channel), line) {
            return Err(at(
                spanned.span(),
                format!("duplicate step: two {channel} steps at the same offset (first at line {first})"),
            ));
        }
        if let Some(previous) = steps.last() {
            if offset < previous.offset {
                return Err(at(
                    spanned.span(),
                    format!(
                        "step `{id}` comes before step `{}` in time; list the steps in order",
                        previous.id
                    ),
                ));
            }
        }
        let when = match &s.when {
            None => Conditions::default(),
            Some(w) => parse_conditions(w, &id).map_err(|m| at(spanned.span(), m))?,
        };
        steps.push(Step {
            id,
            offset,
            channel,
            template,
            when,
        });
    }
    Ok(steps)
}

fn parse_conditions(raw: &RawConditions, step: &str) -> Result<Conditions, String> {
    let stage_in = raw
        .stage_in
        .iter()
        .map(|s| s.parse::<Stage>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("step `{step}`: when.stage_in: {e}"))?;
    let without = raw
        .without
        .iter()
        .map(|s| s.parse::<InteractionKind>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("step `{step}`: when.without: {e}"))?;
    for (key, value) in [("min_score", raw.min_score), ("max_score", raw.max_score)] {
        if let Some(v) = value {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("step `{step}`: when.{key} {v} is outside 0..=100"));
            }
        }
    }
    Ok(Conditions {
        stage_in,
        min_score: raw.min_score,
        max_score: raw.max_score,
        without,
    })
}

fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err(format!("`{name}` must have 1 to 100 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "`{name}` has `{c}`; use letters, digits, `_`, `-` and `.`"
        ));
    }
    Ok(())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    sequence: Vec<Spanned<RawSequence>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSequence {
    name: Spanned<String>,
    segment: Option<Spanned<String>>,
    reactivation: Option<bool>,
    experiment: Option<Spanned<String>>,
    steps: Option<Vec<Spanned<RawStep>>>,
    variant: Option<Vec<Spanned<RawVariant>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: Spanned<String>,
    weight: Spanned<i64>,
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: Option<Spanned<String>>,
    day: Option<Spanned<i64>>,
    hours: Option<Spanned<i64>>,
    channel: Spanned<String>,
    template: Spanned<String>,
    when: Option<RawConditions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConditions {
    #[serde(default)]
    stage_in: Vec<String>,
    min_score: Option<f64>,
    max_score: Option<f64>,
    #[serde(default)]
    without: Vec<String>,
}

/// The channels a set of sequences sends on, for checks elsewhere.
pub fn channels(set: &SequenceSet) -> BTreeSet<Channel> {
    set.sequences
        .iter()
        .flat_map(|s| s.variants.iter())
        .flat_map(|v| v.steps.iter().map(|s| s.channel))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_file_has_the_seed_sequences() {
        let set = SequenceSet::built_in();
        let premium = set.for_segment(Segment::Premium).unwrap();
        let steps: Vec<(Millis, &str)> = premium.variants[0]
            .steps
            .iter()
            .map(|s| (s.offset / (24 * HOUR), s.template.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                (1, "premium_welcome"),
                (3, "premium_value_prop"),
                (5, "premium_case_study"),
                (7, "premium_demo_request")
            ]
        );
        let high = set.for_segment(Segment::HighPriority).unwrap();
        let last = high.variants[0].steps.last().unwrap();
        assert_eq!(
            (
                last.offset / (24 * HOUR),
                last.channel,
                last.template.as_str()
            ),
            (5, Channel::Sms, "high_priority_followup")
        );
        assert!(set.for_segment(Segment::Standard).is_some());
        assert!(set.for_segment(Segment::Low).is_some());
        assert!(set.reactivation().is_some());
        assert!(
            !set.experiments().is_empty(),
            "ships one A/B test as an example"
        );
    }

    fn error(text: &str) -> SequenceError {
        SequenceSet::parse(text, "seq.toml").unwrap_err()
    }

    #[test]
    fn bad_files_are_refused_with_the_line_and_the_reason() {
        let e = error(
            "[[sequence]]\nname = \"premium\"\nsegment = \"premium\"\nsteps = [\n  { day = 1, channel = \"email\", template = \"a\" },\n  { day = 2, channel = \"fax\", template = \"b\" },\n]\n",
        );
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("unknown channel `fax`"), "{e}");
        assert!(e.to_string().starts_with("seq.toml:6: "), "{e}");

        let e = error(
            "[[sequence]]\nname = \"premium\"\nsegment = \"premium\"\nsteps = [\n  { day = -1, channel = \"email\", template = \"a\" },\n]\n",
        );
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("negative"), "{e}");

        let e = error(
            "[[sequence]]\nname = \"premium\"\nsegment = \"premium\"\nsteps = [\n  { day = 1, channel = \"email\", template = \"a\" },\n  { day = 2, channel = \"email\", template = \"a\" },\n]\n",
        );
        assert_eq!(e.line, 6, "{e}");
        assert!(
            e.message.contains("duplicate step `a` (first at line 5)"),
            "{e}"
        );

        let e = error(
            "[[sequence]]\nname = \"p\"\nsegment = \"premium\"\nsteps = [\n  { day = 1, channel = \"email\", template = \"a\", colour = \"red\" },\n]\n",
        );
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("colour"), "{e}");

        let e = error("[[sequence]]\nname = \"p\"\nsegment = \"vip\"\nsteps = []\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("unknown Segment `vip`"), "{e}");

        let e = error(
            "[[sequence]]\nname = \"a\"\nsegment = \"low\"\nsteps = [{ day = 1, channel = \"email\", template = \"x\" }]\n\n[[sequence]]\nname = \"b\"\nsegment = \"low\"\nsteps = [{ day = 1, channel = \"email\", template = \"x\" }]\n",
        );
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("already serves segment low"), "{e}");

        let e = error(
            "[[sequence]]\nname = \"a\"\nsegment = \"low\"\nsteps = [\n { day = 3, channel = \"email\", template = \"x\" },\n { day = 1, channel = \"email\", template = \"y\" },\n]\n",
        );
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("in order"), "{e}");

        let e = error("[[sequence]]\nname = \"a\"\nsegment = \"low\"\nsteps = [\n { day = 3, channel = \"email\" template = \"x\" },\n]\n");
        assert_eq!(e.line, 5, "{e}");
    }

    #[test]
    fn variants_are_assigned_by_a_stable_hash_in_proportion_to_their_weights() {
        let set = SequenceSet::parse(
            "[[sequence]]\nname = \"s\"\nsegment = \"standard\"\nexperiment = \"exp1\"\n\
             [[sequence.variant]]\nname = \"control\"\nweight = 3\nsteps = [{ day = 1, channel = \"email\", template = \"a\" }]\n\
             [[sequence.variant]]\nname = \"short\"\nweight = 1\nsteps = [{ hours = 2, channel = \"email\", template = \"b\" }]\n",
            "t",
        )
        .unwrap();
        let seq = &set.sequences[0];
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for i in 0..20_000 {
            let v = seq.variant_for(&format!("WEB-{i}"));
            *counts.entry(v.name.clone().unwrap()).or_default() += 1;
        }
        let share = counts["short"] as f64 / 20_000.0;
        assert!((share - 0.25).abs() < 0.015, "{counts:?}");
        // Stable: a fixed lead always lands in the same variant.
        assert_eq!(
            seq.variant_for("WEB-42").name,
            seq.variant_for("WEB-42").name
        );
        assert_eq!(stable_hash("exp1", "WEB-42"), stable_hash("exp1", "WEB-42"));
        assert_ne!(stable_hash("exp1", "WEB-42"), stable_hash("exp2", "WEB-42"));
        assert_eq!(set.experiments()["exp1"], ["control", "short"]);
    }
}
