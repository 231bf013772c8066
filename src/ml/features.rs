//! Model features from a lead's state, as of a point in time.
//!
//! Every feature is computed from the state and an instant `at`: recency and
//! time-in-stage are measured up to `at`, so the same state gives the same
//! features whenever it is scored. Training rows use the state a lead had just
//! before its closing stage change (`LeadState::pre_close`), evaluated at the
//! close: nothing in them was known only after the outcome.

use rustc_hash::FxHashMap;

use serde::{Deserialize, Serialize};

use crate::core::apply::ScorePolicy;
use crate::core::state::LeadState;
use crate::events::{InteractionKind, Millis, MILLIS_PER_DAY};
use crate::ml::derived::Derived;
use crate::ml::table::ColumnKind;

/// Custom attributes (LeadEvent.attributes) used as model features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Attributes read as numbers; a value that does not parse is missing.
    pub numeric_attributes: Vec<String>,
    pub categorical_attributes: Vec<String>,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            numeric_attributes: Vec::new(),
            categorical_attributes: vec!["industry".into(), "company_size".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureDef {
    pub name: String,
    pub kind: ColumnKind,
}

/// One feature's value before encoding: a number (NaN = missing) or a
/// category (None = missing).
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    Number(f64),
    Category(Option<String>),
}

pub const ATTRIBUTE_PREFIX: &str = "attr.";

const NUMERIC_BASE: &[&str] = &[
    "initial_score",
    "estimated_value",
    "probability",
    "hours_to_first_contact",
    "days_since_created",
    "days_in_stage",
    "engagement",
];
const CATEGORICAL_BASE: &[&str] = &["stage", "source", "owner", "segment"];

/// The features a model trained on lead states uses, in column order.
pub fn feature_defs(config: &FeatureConfig) -> Vec<FeatureDef> {
    let numeric = |name: String| FeatureDef {
        name,
        kind: ColumnKind::Numeric,
    };
    let categorical = |name: String| FeatureDef {
        name,
        kind: ColumnKind::Categorical,
    };
    let mut defs: Vec<FeatureDef> = NUMERIC_BASE
        .iter()
        .map(|n| numeric(n.to_string()))
        .collect();
    for kind in InteractionKind::ALL {
        defs.push(numeric(format!("{kind}_count")));
        defs.push(numeric(format!("days_since_{kind}")));
    }
    defs.extend(CATEGORICAL_BASE.iter().map(|n| categorical(n.to_string())));
    defs.extend(
        config
            .numeric_attributes
            .iter()
            .map(|a| numeric(format!("{ATTRIBUTE_PREFIX}{a}"))),
    );
    defs.extend(
        config
            .categorical_attributes
            .iter()
            .map(|a| categorical(format!("{ATTRIBUTE_PREFIX}{a}"))),
    );
    defs
}

fn days_between(from: Millis, to: Millis) -> f64 {
    (to - from) as f64 / MILLIS_PER_DAY as f64
}

/// The value of each of `defs` for `state` as of `at`. A name this version
/// does not know (a model trained elsewhere) reads as missing.
pub fn extract(
    state: &LeadState,
    at: Millis,
    policy: &ScorePolicy<'_>,
    defs: &[FeatureDef],
) -> Vec<FeatureValue> {
    let initial = state.initial_score(policy.rules, at);
    defs.iter()
        .map(|def| {
            let number = |v: Option<f64>| FeatureValue::Number(v.unwrap_or(f64::NAN));
            let category = |v: Option<&str>| FeatureValue::Category(v.map(str::to_string));
            let name = def.name.as_str();
            if let Some(attribute) = name.strip_prefix(ATTRIBUTE_PREFIX) {
                let raw = state.attributes.get(attribute).map(String::as_str);
                return match def.kind {
                    ColumnKind::Numeric => number(raw.and_then(|v| v.trim().parse().ok())),
                    ColumnKind::Categorical => category(raw),
                };
            }
            match name {
                "initial_score" => number(Some(initial)),
                "estimated_value" => number(state.estimated_value),
                "probability" => number(state.probability),
                "hours_to_first_contact" => number(
                    state
                        .created_at
                        .zip(state.first_contact_at)
                        .filter(|(_, first)| *first <= at)
                        .map(|(created, first)| (first - created) as f64 / 3_600_000.0),
                ),
                "days_since_created" => number(state.created_at.map(|c| days_between(c, at))),
                "days_in_stage" => number(
                    state
                        .stage_entered_at
                        .or(state.created_at)
                        .map(|t| days_between(t, at)),
                ),
                "engagement" => number(Some(
                    state
                        .engagement
                        .value_at(at, policy.rules.engagement_half_life_days),
                )),
                "stage" => category(Some(state.stage.as_str())),
                "source" => category(state.source.as_deref()),
                "owner" => category(state.owner.as_deref()),
                "segment" => category(Some(policy.segments.segment(initial).as_str())),
                other => {
                    let interaction = |suffix: &str, prefix: &str| {
                        other
                            .strip_suffix(suffix)
                            .and_then(|k| k.strip_prefix(prefix))
                            .and_then(|k| k.parse::<InteractionKind>().ok())
                    };
                    if let Some(kind) = interaction("_count", "") {
                        number(Some(state.interaction_count(kind) as f64))
                    } else if let Some(kind) = interaction("", "days_since_") {
                        number(
                            state
                                .interactions
                                .get(&kind)
                                .map(|s| days_between(s.last_at, at)),
                        )
                    } else {
                        match def.kind {
                            ColumnKind::Numeric => number(None),
                            ColumnKind::Categorical => category(None),
                        }
                    }
                }
            }
        })
        .collect()
}

/// Category lists per feature, learnt from training rows: a category's code
/// is its index; one not seen in training encodes as missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encoder {
    pub features: Vec<FeatureDef>,
    /// Per feature (empty for numeric ones), categories by falling frequency.
    pub categories: Vec<Vec<String>>,
    /// Per feature, category name to code: scoring looks a lead's
    /// categories up once per event. FxHash: the names are ours (from
    /// training rows), so a hash-flooding defence buys nothing, and SipHash
    /// was a fifth of scoring one row.
    #[serde(skip)]
    codes: Derived<Vec<FxHashMap<String, usize>>>,
}

/// Categories kept per feature; rarer ones encode as missing.
const MAX_CATEGORIES: usize = 250;

impl Encoder {
    pub fn fit<'a>(
        features: Vec<FeatureDef>,
        rows: impl Iterator<Item = &'a [FeatureValue]>,
    ) -> Encoder {
        let mut counts: Vec<std::collections::BTreeMap<String, usize>> =
            vec![Default::default(); features.len()];
        for row in rows {
            for (i, v) in row.iter().enumerate() {
                if let FeatureValue::Category(Some(c)) = v {
                    *counts[i].entry(c.clone()).or_default() += 1;
                }
            }
        }
        let categories = counts
            .into_iter()
            .map(|c| {
                let mut by_count: Vec<(String, usize)> = c.into_iter().collect();
                by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                by_count
                    .into_iter()
                    .take(MAX_CATEGORIES)
                    .map(|(name, _)| name)
                    .collect()
            })
            .collect();
        Encoder {
            features,
            categories,
            codes: Derived::default(),
        }
    }

    pub fn encode(&self, row: &[FeatureValue]) -> Vec<f64> {
        let codes = self.codes();
        (0..row.len()).map(|i| encode_one(codes, row, i)).collect()
    }

    /// Feature `i` of `row` as [`Encoder::encode`] would give it, for
    /// callers that read only some features.
    pub fn value_reader<'r>(&'r self, row: &'r [FeatureValue]) -> impl Fn(usize) -> f64 + 'r {
        let codes = self.codes();
        move |i| encode_one(codes, row, i)
    }

    fn codes(&self) -> &[FxHashMap<String, usize>] {
        self.codes.get_or_init(|| {
            self.categories
                .iter()
                .map(|names| {
                    names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.clone(), i))
                        .collect()
                })
                .collect()
        })
    }

    pub fn kinds(&self) -> Vec<ColumnKind> {
        self.features.iter().map(|f| f.kind).collect()
    }
}

#[inline(always)]
fn encode_one(codes: &[FxHashMap<String, usize>], row: &[FeatureValue], i: usize) -> f64 {
    match &row[i] {
        FeatureValue::Number(x) if x.is_finite() => *x,
        FeatureValue::Number(_) => f64::NAN,
        FeatureValue::Category(Some(c)) => codes[i].get(c.as_str()).map_or(f64::NAN, |p| *p as f64),
        FeatureValue::Category(None) => f64::NAN,
    }
}
