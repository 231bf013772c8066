//! Avro's Parsing Canonical Form and the CRC-64-AVRO fingerprint, as the
//! specification defines them ("Parsing Canonical Form for Schemas",
//! "Schema Fingerprints"), computed from the schema's JSON text.
//!
//! apache-avro 0.21 derives its canonical form from its parsed `Schema`,
//! which re-serialises a logical type as `{"type":"long","logicalType":…}`
//! and, once `logicalType` is stripped, leaves `{"type":"long"}` where the
//! specification has `"long"`. Its fingerprints therefore differ from those
//! of the Java library, fastavro and every other implementation for any
//! schema with a logical type; this module is what the single-object
//! encoding uses instead (the old ones are still accepted, see `SchemaSet`).

use serde_json::Value;

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The attributes the canonical form keeps, in the order it writes them.
const KEPT: &[&str] = &[
    "name", "type", "fields", "symbols", "items", "values", "size",
];

#[derive(Debug, thiserror::Error)]
#[error("schema is not valid JSON for the canonical form: {0}")]
pub struct CanonicalFormError(String);

/// The Parsing Canonical Form of a schema given as JSON text.
pub fn parsing_canonical_form(schema_json: &str) -> Result<String, CanonicalFormError> {
    let value: Value =
        serde_json::from_str(schema_json).map_err(|e| CanonicalFormError(e.to_string()))?;
    let mut out = String::new();
    write_schema(&value, None, &mut out)?;
    Ok(out)
}

/// CRC-64-AVRO (the specification's Rabin fingerprint) of `bytes`.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ table[((fp ^ b as u64) & 0xff) as usize]
    })
}

/// The single-object header's fingerprint: CRC-64-AVRO of the canonical
/// form, little-endian.
pub fn fingerprint(schema_json: &str) -> Result<[u8; 8], CanonicalFormError> {
    Ok(crc64_avro(parsing_canonical_form(schema_json)?.as_bytes()).to_le_bytes())
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        _ if name.contains('.') || PRIMITIVES.contains(&name) => name.to_string(),
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

fn write_string(s: &str, out: &mut String) {
    // [STRINGS]: serde_json writes non-ASCII as UTF-8, escaping only what
    // JSON requires.
    out.push_str(&serde_json::to_string(s).expect("a string serialises"));
}

fn write_schema(
    schema: &Value,
    namespace: Option<&str>,
    out: &mut String,
) -> Result<(), CanonicalFormError> {
    match schema {
        // A primitive, or a reference to a named type ([FULLNAMES]).
        Value::String(name) => write_string(&full_name(name, namespace), out),
        Value::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_schema(branch, namespace, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let kind = map
                .get("type")
                .ok_or_else(|| CanonicalFormError(format!("object without \"type\": {schema}")))?;
            let kind_name = match kind {
                Value::String(k) => k.as_str(),
                // {"type": {...}} or {"type": [...]}: the inner schema is the schema.
                other => return write_schema(other, namespace, out),
            };
            // [PRIMITIVES]: every other attribute (logicalType, …) is stripped.
            if PRIMITIVES.contains(&kind_name) {
                write_string(kind_name, out);
                return Ok(());
            }
            let named = matches!(kind_name, "record" | "error" | "enum" | "fixed");
            if !named && !matches!(kind_name, "array" | "map") {
                // A reference written as {"type": "io.leadflow.Stage"}.
                return write_schema(kind, namespace, out);
            }
            let (name, inner_namespace) = if named {
                let raw = map
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| CanonicalFormError(format!("{kind_name} without a name")))?;
                let own = map.get("namespace").and_then(Value::as_str).or(namespace);
                let full = full_name(raw, own);
                let ns = full.rsplit_once('.').map(|(ns, _)| ns.to_string());
                (Some(full), ns)
            } else {
                (None, namespace.map(str::to_string))
            };
            out.push('{');
            let mut first = true;
            for key in KEPT {
                let Some(value) = map.get(*key) else { continue };
                if !first {
                    out.push(',');
                }
                first = false;
                write_string(key, out);
                out.push(':');
                match *key {
                    "name" => write_string(name.as_deref().unwrap_or_default(), out),
                    "type" => write_string(
                        if kind_name == "error" {
                            "record"
                        } else {
                            kind_name
                        },
                        out,
                    ),
                    "fields" => write_fields(value, inner_namespace.as_deref(), out)?,
                    "symbols" => {
                        let symbols = value.as_array().ok_or_else(|| {
                            CanonicalFormError("enum symbols is not an array".into())
                        })?;
                        out.push('[');
                        for (i, s) in symbols.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            write_string(s.as_str().unwrap_or_default(), out);
                        }
                        out.push(']');
                    }
                    "items" | "values" => write_schema(value, inner_namespace.as_deref(), out)?,
                    // [INTEGERS]
                    "size" => {
                        let size = match value {
                            Value::String(s) => s.trim().parse::<u64>().ok(),
                            other => other.as_u64(),
                        }
                        .ok_or_else(|| CanonicalFormError(format!("fixed size {value}")))?;
                        out.push_str(&size.to_string());
                    }
                    _ => unreachable!("KEPT lists the keys"),
                }
            }
            out.push('}');
        }
        other => return Err(CanonicalFormError(format!("not a schema: {other}"))),
    }
    Ok(())
}

fn write_fields(
    fields: &Value,
    namespace: Option<&str>,
    out: &mut String,
) -> Result<(), CanonicalFormError> {
    let fields = fields
        .as_array()
        .ok_or_else(|| CanonicalFormError("record fields is not an array".into()))?;
    out.push('[');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let name = field
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| CanonicalFormError(format!("field without a name: {field}")))?;
        let schema = field
            .get("type")
            .ok_or_else(|| CanonicalFormError(format!("field {name} without a type")))?;
        out.push_str("{\"name\":");
        write_string(name, out);
        out.push_str(",\"type\":");
        write_schema(schema, namespace, out)?;
        out.push('}');
    }
    out.push(']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_types_reduce_to_their_primitive() {
        let pcf = parsing_canonical_form(
            r#"{"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"},"default":0},
                {"name":"u","type":["null",{"type":"string"}]},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["x","y"],"default":"x"}},
                {"name":"e2","type":"E"},
                {"name":"f","type":{"type":"fixed","name":"F","namespace":"c","size":"016"}},
                {"name":"m","type":{"type":"map","values":{"type":"array","items":"c.F"}}}]}"#,
        )
        .unwrap();
        assert_eq!(
            pcf,
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"t","type":"long"},{"name":"u","type":["null","string"]},{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["x","y"]}},{"name":"e2","type":"a.b.E"},{"name":"f","type":{"name":"c.F","type":"fixed","size":16}},{"name":"m","type":{"type":"map","values":{"type":"array","items":"c.F"}}}]}"#
        );
    }

    /// Cases from the Avro project's shared test data (schema-tests.txt),
    /// whose fingerprints the Java implementation cross-checks.
    #[test]
    fn the_specifications_published_examples() {
        let cases: &[(&str, &str, i64)] = &[
            (r#""null""#, r#""null""#, 7195948357588979594),
            (
                r#"{"type":"boolean"}"#,
                r#""boolean""#,
                -6970731678124411036,
            ),
            (r#""int""#, r#""int""#, 8247732601305521295),
            (r#"{"type":"long"}"#, r#""long""#, -3434872931120570953),
            (r#""string""#, r#""string""#, -8142146995180207161),
            (
                r#"[ "int" , {"type":"boolean"} ]"#,
                r#"["int","boolean"]"#,
                5392556393470105090,
            ),
            (
                r#"{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}"#,
                r#"{"name":"x.y.foo","type":"record","fields":[]}"#,
                5916914534497305771,
            ),
            (
                r#"{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}"#,
                r#"{"name":"a.b.foo","type":"record","fields":[]}"#,
                -4616218487480524110,
            ),
            (
                r#"{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},
                   {"order":"descending","name":"f2","doc":"Hello","type":"int"}],
                   "type":"record", "name":"foo"}"#,
                r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}"#,
                -4860222112080293046,
            ),
            (
                r#"{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}"#,
                r#"{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}"#,
                -4448647247586288245,
            ),
            (
                r#"{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}"#,
                r#"{"name":"x.y.z.foo","type":"fixed","size":32}"#,
                -3064184465700546786,
            ),
            (
                r#"{ "items":{"type":"null"}, "type":"array"}"#,
                r#"{"type":"array","items":"null"}"#,
                -589620603366471059,
            ),
            (
                r#"{"name":"PigValue","type":"record",
                   "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}"#,
                r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
                -1759257747318642341,
            ),
        ];
        for (input, canonical, fp) in cases {
            let pcf = parsing_canonical_form(input).unwrap();
            assert_eq!(&pcf, canonical, "{input}");
            assert_eq!(crc64_avro(pcf.as_bytes()) as i64, *fp, "{input}");
        }
        assert_eq!(crc64_avro(b""), 0xc15d_213a_a4d7_a795);
    }
}
