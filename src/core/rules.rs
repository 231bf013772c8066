//! Rule-based scoring (SPEC §3): the initial score leadflow computes when an
//! upstream event brings none, and the segment a final score falls in.
//!
//! initial = base + source weight + value band points + probability × weight
//!           + min(cap, engagement decayed to the scoring time), clamped to 0..100
//!
//! Engagement is a sum of interaction weights, each halved every
//! `engagement_half_life_days`; it is kept as a [`DecayedSum`] in the lead's
//! state so that scoring never needs the lead's full interaction history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::{InteractionKind, Millis, Segment, MILLIS_PER_DAY};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub base: f64,
    /// Points per lead source; sources not listed get `default_source_weight`.
    pub source_weights: BTreeMap<String, f64>,
    pub default_source_weight: f64,
    /// Engagement points per interaction kind (negative for unsubscribe, bounce).
    pub interaction_weights: BTreeMap<String, f64>,
    pub engagement_half_life_days: f64,
    pub engagement_cap: f64,
    pub probability_weight: f64,
    /// Points by estimated value: the highest band whose `min` the value reaches.
    pub value_bands: Vec<ValueBand>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueBand {
    pub min: f64,
    pub points: f64,
}

impl Default for RuleConfig {
    fn default() -> Self {
        let source_weights = [
            ("referral", 20.0),
            ("partner", 18.0),
            ("event", 15.0),
            ("web", 10.0),
            ("paid_search", 8.0),
            ("social", 5.0),
        ];
        let interaction_weights = [
            ("email_open", 1.0),
            ("email_click", 3.0),
            ("email_reply", 10.0),
            ("sms_reply", 10.0),
            ("call", 6.0),
            ("meeting", 12.0),
            ("web_visit", 1.5),
            ("form_submit", 8.0),
            ("manual_contact", 4.0),
            ("unsubscribe", -10.0),
            ("bounce", -5.0),
        ];
        RuleConfig {
            base: 10.0,
            source_weights: source_weights
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            default_source_weight: 5.0,
            interaction_weights: interaction_weights
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            engagement_half_life_days: 14.0,
            engagement_cap: 35.0,
            probability_weight: 15.0,
            value_bands: vec![
                ValueBand {
                    min: 0.0,
                    points: 0.0,
                },
                ValueBand {
                    min: 5_000.0,
                    points: 5.0,
                },
                ValueBand {
                    min: 20_000.0,
                    points: 10.0,
                },
                ValueBand {
                    min: 50_000.0,
                    points: 15.0,
                },
            ],
        }
    }
}

/// Lowest final score of each segment; anything below `standard` is `low`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentThresholds {
    pub premium: f64,
    pub high_priority: f64,
    pub standard: f64,
}

impl Default for SegmentThresholds {
    fn default() -> Self {
        SegmentThresholds {
            premium: 75.0,
            high_priority: 55.0,
            standard: 30.0,
        }
    }
}

impl SegmentThresholds {
    pub fn segment(&self, final_score: f64) -> Segment {
        if final_score >= self.premium {
            Segment::Premium
        } else if final_score >= self.high_priority {
            Segment::HighPriority
        } else if final_score >= self.standard {
            Segment::Standard
        } else {
            Segment::Low
        }
    }
}

/// A sum of weights that halves every `half_life`, exact whatever order the
/// terms arrive in: a term older than `as_of` is decayed on the way in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DecayedSum {
    pub value: f64,
    pub as_of: Millis,
}

impl DecayedSum {
    pub fn add(&mut self, weight: f64, at: Millis, half_life_days: f64) {
        if self.value == 0.0 && self.as_of == 0 {
            *self = DecayedSum {
                value: weight,
                as_of: at,
            };
        } else if at >= self.as_of {
            self.value = self.value_at(at, half_life_days) + weight;
            self.as_of = at;
        } else {
            self.value += weight * decay(self.as_of - at, half_life_days);
        }
    }

    pub fn value_at(&self, at: Millis, half_life_days: f64) -> f64 {
        if at <= self.as_of {
            self.value
        } else {
            self.value * decay(at - self.as_of, half_life_days)
        }
    }
}

fn decay(elapsed: Millis, half_life_days: f64) -> f64 {
    let days = elapsed as f64 / MILLIS_PER_DAY as f64;
    0.5f64.powf(days / half_life_days)
}

/// What the rules look at; a view of the lead's state.
pub struct RuleInputs<'a> {
    pub source: Option<&'a str>,
    pub estimated_value: Option<f64>,
    pub probability: Option<f64>,
    pub engagement: DecayedSum,
}

impl RuleConfig {
    pub fn interaction_weight(&self, kind: InteractionKind) -> f64 {
        self.interaction_weights
            .get(kind.as_str())
            .copied()
            .unwrap_or(0.0)
    }

    pub fn score(&self, inputs: &RuleInputs<'_>, at: Millis) -> f64 {
        let source = inputs
            .source
            .and_then(|s| self.source_weights.get(s))
            .copied()
            .unwrap_or(self.default_source_weight);
        let value = inputs
            .estimated_value
            .and_then(|v| self.value_bands.iter().rev().find(|b| v >= b.min))
            .map_or(0.0, |b| b.points);
        let probability = inputs.probability.unwrap_or(0.0) * self.probability_weight;
        let engagement = inputs
            .engagement
            .value_at(at, self.engagement_half_life_days)
            .min(self.engagement_cap);
        let total = self.base + source + value + probability + engagement;
        // Two decimals: the score is stored and compared, and float noise in
        // the last bits must not make a replay differ from a live run.
        (total.clamp(0.0, 100.0) * 100.0).round() / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decayed_sum_is_order_independent() {
        let hl = 14.0;
        let terms = [
            (3.0, 0),
            (5.0, 10 * MILLIS_PER_DAY),
            (1.0, 4 * MILLIS_PER_DAY),
        ];
        let mut forward = DecayedSum::default();
        for (w, t) in terms {
            forward.add(w, t, hl);
        }
        let mut backward = DecayedSum::default();
        for (w, t) in terms.iter().rev() {
            backward.add(*w, *t, hl);
        }
        let at = 20 * MILLIS_PER_DAY;
        let expected: f64 = terms.iter().map(|(w, t)| w * decay(at - t, hl)).sum();
        assert!((forward.value_at(at, hl) - expected).abs() < 1e-9);
        assert!((backward.value_at(at, hl) - expected).abs() < 1e-9);
    }

    #[test]
    fn engagement_halves_every_half_life() {
        let mut s = DecayedSum::default();
        s.add(8.0, 0, 7.0);
        assert!((s.value_at(7 * MILLIS_PER_DAY, 7.0) - 4.0).abs() < 1e-9);
        assert!((s.value_at(14 * MILLIS_PER_DAY, 7.0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn rule_score_adds_components_and_clamps() {
        let rules = RuleConfig::default();
        let inputs = RuleInputs {
            source: Some("referral"),
            estimated_value: Some(25_000.0),
            probability: Some(0.4),
            engagement: DecayedSum {
                value: 12.0,
                as_of: 0,
            },
        };
        // 10 base + 20 referral + 10 band + 0.4 × 15 + 12 engagement
        assert_eq!(rules.score(&inputs, 0), 58.0);
        let unknown_source = RuleInputs {
            source: Some("carrier_pigeon"),
            ..inputs
        };
        assert_eq!(rules.score(&unknown_source, 0), 43.0);
        let huge = RuleInputs {
            source: None,
            estimated_value: None,
            probability: Some(1.0),
            engagement: DecayedSum {
                value: 1e6,
                as_of: 0,
            },
        };
        // Engagement is capped at 35: 10 + 5 + 15 + 35.
        assert_eq!(rules.score(&huge, 0), 65.0);
    }

    #[test]
    fn segments_follow_thresholds() {
        let t = SegmentThresholds::default();
        assert_eq!(t.segment(75.0), Segment::Premium);
        assert_eq!(t.segment(74.99), Segment::HighPriority);
        assert_eq!(t.segment(30.0), Segment::Standard);
        assert_eq!(t.segment(0.0), Segment::Low);
    }
}
