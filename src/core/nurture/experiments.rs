//! A/B results: per-variant enrolment, reply and closed_won counts and a
//! two-proportion z-test of each variant against the control (the first
//! variant in the sequences file).

use std::collections::BTreeMap;

use serde::Serialize;

/// Counts of one variant, as the store aggregates them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct VariantCounts {
    pub experiment: String,
    pub variant: String,
    pub enrolled: i64,
    pub replied: i64,
    pub converted: i64,
}

/// One outcome of a variant compared with the control.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    pub rate: f64,
    /// (rate − control rate) / control rate; `None` when the control rate is 0.
    pub lift: Option<f64>,
    /// Two-sided p-value of the pooled two-proportion z-test; `None` for the
    /// control itself or when either group is empty or the pooled rate is 0 or 1.
    pub p_value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VariantReport {
    pub variant: String,
    pub control: bool,
    pub enrolled: i64,
    pub replied: i64,
    pub converted: i64,
    pub reply: Comparison,
    pub conversion: Comparison,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExperimentReport {
    pub experiment: String,
    pub variants: Vec<VariantReport>,
}

/// Two-sided p-value of H0: p1 = p2, with the pooled standard error.
pub fn two_proportion_p_value(x1: i64, n1: i64, x2: i64, n2: i64) -> Option<f64> {
    if n1 <= 0 || n2 <= 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        return None;
    }
    let z = (x1 as f64 / n1f - x2 as f64 / n2f) / se;
    Some(erfc(z.abs() / std::f64::consts::SQRT_2))
}

/// Complementary error function (Numerical Recipes' Chebyshev fit,
/// relative error below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

fn rate(x: i64, n: i64) -> f64 {
    if n > 0 {
        x as f64 / n as f64
    } else {
        0.0
    }
}

fn compare(x: i64, n: i64, cx: i64, cn: i64, is_control: bool) -> Comparison {
    let r = rate(x, n);
    let cr = rate(cx, cn);
    Comparison {
        rate: r,
        lift: (!is_control && cr > 0.0).then(|| (r - cr) / cr),
        p_value: if is_control {
            None
        } else {
            two_proportion_p_value(x, n, cx, cn)
        },
    }
}

/// Builds the report from the stored counts. `order` gives each
/// experiment's variants as configured (the first is the control); variants
/// the store has but the file no longer names come after, by name.
pub fn report(
    counts: &[VariantCounts],
    order: &BTreeMap<String, Vec<String>>,
) -> Vec<ExperimentReport> {
    let mut by_experiment: BTreeMap<&str, Vec<&VariantCounts>> = BTreeMap::new();
    for c in counts {
        by_experiment.entry(&c.experiment).or_default().push(c);
    }
    for name in order.keys() {
        by_experiment.entry(name).or_default();
    }
    let mut out = Vec::new();
    for (experiment, rows) in by_experiment {
        let mut names: Vec<String> = order.get(experiment).cloned().unwrap_or_default();
        let mut extra: Vec<String> = rows
            .iter()
            .map(|r| r.variant.clone())
            .filter(|v| !names.contains(v))
            .collect();
        extra.sort();
        names.extend(extra);
        let find = |v: &str| rows.iter().find(|r| r.variant == v).copied();
        let zero = |v: &str| VariantCounts {
            experiment: experiment.to_string(),
            variant: v.to_string(),
            enrolled: 0,
            replied: 0,
            converted: 0,
        };
        let control = names
            .first()
            .map(|v| find(v).cloned().unwrap_or_else(|| zero(v)));
        let variants = names
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let c = find(v).cloned().unwrap_or_else(|| zero(v));
                let k = control.as_ref().expect("names is not empty here");
                VariantReport {
                    variant: v.clone(),
                    control: i == 0,
                    enrolled: c.enrolled,
                    replied: c.replied,
                    converted: c.converted,
                    reply: compare(c.replied, c.enrolled, k.replied, k.enrolled, i == 0),
                    conversion: compare(c.converted, c.enrolled, k.converted, k.enrolled, i == 0),
                }
            })
            .collect();
        out.push(ExperimentReport {
            experiment: experiment.to_string(),
            variants,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_match_the_textbook() {
        // 120/1000 vs 100/1000: z = 1.4293, two-sided p = 0.1529 (scipy's
        // proportions_ztest gives the same).
        let p = two_proportion_p_value(120, 1000, 100, 1000).unwrap();
        assert!((p - 0.1529).abs() < 5e-4, "{p}");
        // 200/1000 vs 100/1000: z = 6.262, p = 3.79e-10.
        let p = two_proportion_p_value(200, 1000, 100, 1000).unwrap();
        assert!(p < 1e-9 && p > 1e-10, "{p}");
        // Equal rates: p = 1.
        let p = two_proportion_p_value(50, 500, 50, 500).unwrap();
        assert!((p - 1.0).abs() < 1e-6, "{p}");
        assert_eq!(two_proportion_p_value(0, 10, 0, 10), None);
        assert_eq!(two_proportion_p_value(1, 0, 0, 10), None);
    }

    #[test]
    fn the_report_compares_each_variant_with_the_first_configured_one() {
        let counts = vec![
            VariantCounts {
                experiment: "e".into(),
                variant: "story".into(),
                enrolled: 1000,
                replied: 150,
                converted: 120,
            },
            VariantCounts {
                experiment: "e".into(),
                variant: "overview".into(),
                enrolled: 1000,
                replied: 150,
                converted: 100,
            },
        ];
        let order = BTreeMap::from([(
            "e".to_string(),
            vec!["overview".to_string(), "story".to_string()],
        )]);
        let report = report(&counts, &order);
        let v = &report[0].variants;
        assert_eq!(v[0].variant, "overview");
        assert!(v[0].control && v[0].conversion.p_value.is_none());
        assert_eq!(v[1].variant, "story");
        assert!((v[1].conversion.lift.unwrap() - 0.2).abs() < 1e-12);
        assert!((v[1].conversion.p_value.unwrap() - 0.1529).abs() < 5e-4);
        assert!((v[1].reply.p_value.unwrap() - 1.0).abs() < 1e-6);
    }
}
