//! A bounded pass over an Avro datum, made before apache-avro decodes it.
//!
//! apache-avro 0.21 trusts what the bytes claim: a map header announcing 500
//! million entries makes it reserve the space up front (the process aborts
//! on the failed allocation, and again on every restart, since the message
//! is read again), and input that ends where a union index, a boolean or a
//! string is due is read as null instead of failing. This pass walks the
//! datum with the writer's schema and accepts it only if
//!
//! - every length and count fits in the bytes actually left (a block of
//!   items that encode to nothing, such as nulls, is bounded by the datum's
//!   size instead), so nothing decoded later can allocate more than a small
//!   multiple of the message;
//! - every value is complete and valid where the encoding says so (varints
//!   of at most 10 bytes that fit their type, booleans 0 or 1, union and
//!   enum indexes in range, strings in UTF-8, block byte sizes that match);
//! - nesting stays within [`MAX_DEPTH`];
//! - the datum ends exactly where the record does.
//!
//! Only then does apache-avro decode and resolve it, which keeps one decoder
//! (and its schema resolution) in the product.

use std::collections::HashMap;

use apache_avro::schema::{Name, Namespace, Schema};

use super::CodecError;

/// Records, arrays, maps and unions nested deeper than this are refused: our
/// schemas nest four levels, and the decoder recurses once per level.
pub const MAX_DEPTH: usize = 64;

/// The named types of a schema, by full name, for resolving references.
pub type NamedTypes = HashMap<Name, Schema>;

/// Collects the record, enum and fixed definitions of `schema`.
pub fn named_types(schema: &Schema) -> NamedTypes {
    fn collect(schema: &Schema, ns: &Namespace, out: &mut NamedTypes) {
        match schema {
            Schema::Record(r) => {
                let name = r.name.fully_qualified_name(ns);
                let inner = name.namespace.clone();
                out.insert(name, schema.clone());
                for field in &r.fields {
                    collect(&field.schema, &inner, out);
                }
            }
            Schema::Enum(e) => {
                out.insert(e.name.fully_qualified_name(ns), schema.clone());
            }
            Schema::Fixed(f) => {
                out.insert(f.name.fully_qualified_name(ns), schema.clone());
            }
            Schema::Decimal(d) => collect(&d.inner, ns, out),
            Schema::Array(a) => collect(&a.items, ns, out),
            Schema::Map(m) => collect(&m.types, ns, out),
            Schema::Union(u) => u.variants().iter().for_each(|v| collect(v, ns, out)),
            _ => {}
        }
    }
    let mut out = NamedTypes::new();
    collect(schema, &None, &mut out);
    out
}

/// Checks that `datum` is one complete, well-formed value of `schema`.
pub fn check_datum(schema: &Schema, names: &NamedTypes, datum: &[u8]) -> Result<(), CodecError> {
    let mut walker = Walker {
        names,
        data: datum,
        pos: 0,
        items_left: datum.len(),
        depth: 0,
    };
    walker.value(schema, &None)?;
    if walker.pos != datum.len() {
        return Err(CodecError::InvalidAvro(format!(
            "{} trailing bytes after the datum",
            datum.len() - walker.pos
        )));
    }
    Ok(())
}

struct Walker<'a> {
    names: &'a NamedTypes,
    data: &'a [u8],
    pos: usize,
    /// Array and map items still allowed: at most one per byte of the datum.
    items_left: usize,
    depth: usize,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn truncated(&self, what: &str) -> CodecError {
        CodecError::Truncated(format!(
            "the datum ends at byte {} inside {what}",
            self.data.len()
        ))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], CodecError> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn long(&mut self, what: &str) -> Result<i64, CodecError> {
        let start = self.pos;
        let mut raw: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.data.get(self.pos) else {
                return Err(self.truncated(what));
            };
            self.pos += 1;
            if i == 9 && byte > 1 {
                break;
            }
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(CodecError::InvalidAvro(format!(
            "{what}: the variable-length integer at byte {start} is longer than 64 bits"
        )))
    }

    fn int(&mut self, what: &str) -> Result<i32, CodecError> {
        let at = self.pos;
        let v = self.long(what)?;
        i32::try_from(v).map_err(|_| {
            CodecError::InvalidAvro(format!("{what}: {v} at byte {at} does not fit an int"))
        })
    }

    /// A length prefix that must fit in what is left.
    fn length(&mut self, what: &str) -> Result<usize, CodecError> {
        let at = self.pos;
        let len = self.long(what)?;
        let len = usize::try_from(len).map_err(|_| {
            CodecError::InvalidAvro(format!("{what}: negative length {len} at byte {at}"))
        })?;
        if len > self.remaining() {
            return Err(CodecError::Truncated(format!(
                "{what} at byte {at} claims {len} bytes but only {} remain",
                self.remaining()
            )));
        }
        Ok(len)
    }

    fn value(&mut self, schema: &Schema, ns: &Namespace) -> Result<(), CodecError> {
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => match self.take(1, "a boolean")?[0] {
                0 | 1 => Ok(()),
                b => Err(CodecError::InvalidAvro(format!(
                    "boolean byte 0x{b:02x} at byte {} is neither 0 nor 1",
                    self.pos - 1
                ))),
            },
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int("an int").map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long("a long").map(drop),
            Schema::Float => self.take(4, "a float").map(drop),
            Schema::Double => self.take(8, "a double").map(drop),
            Schema::Duration => self.take(12, "a duration").map(drop),
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid => {
                let len = self.length("a byte string")?;
                self.take(len, "a byte string").map(drop)
            }
            Schema::String => {
                let at = self.pos;
                let len = self.length("a string")?;
                let bytes = self.take(len, "a string")?;
                std::str::from_utf8(bytes).map(drop).map_err(|e| {
                    CodecError::InvalidAvro(format!("the string at byte {at} is not UTF-8: {e}"))
                })
            }
            Schema::Fixed(f) => self.take(f.size, "a fixed").map(drop),
            Schema::Decimal(d) => self.value(&d.inner, ns),
            Schema::Enum(e) => {
                let at = self.pos;
                let index = self.int("an enum index")?;
                if index < 0 || index as usize >= e.symbols.len() {
                    return Err(CodecError::InvalidAvro(format!(
                        "enum {} index {index} at byte {at} is not one of its {} symbols",
                        e.name.name,
                        e.symbols.len()
                    )));
                }
                Ok(())
            }
            Schema::Union(u) => self.nested(|w| {
                let at = w.pos;
                let index = w.long("a union index")?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| {
                        CodecError::InvalidAvro(format!(
                            "union index {index} at byte {at}, the union has {} branches",
                            u.variants().len()
                        ))
                    })?;
                w.value(variant, ns)
            }),
            Schema::Record(r) => self.nested(|w| {
                let inner = r.name.fully_qualified_name(ns).namespace;
                for field in &r.fields {
                    w.value(&field.schema, &inner)?;
                }
                Ok(())
            }),
            Schema::Array(a) => self.nested(|w| w.blocks(&a.items, false, ns)),
            Schema::Map(m) => self.nested(|w| w.blocks(&m.types, true, ns)),
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(ns);
                let target = self.names.get(&name).ok_or_else(|| {
                    CodecError::InvalidAvro(format!("the schema refers to an unknown type {name}"))
                })?;
                self.value(target, &name.namespace)
            }
        }
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        if self.depth >= MAX_DEPTH {
            return Err(CodecError::InvalidAvro(format!(
                "values nest deeper than {MAX_DEPTH} levels"
            )));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// The blocks of an array (`is_map`: of a map, each item a key and a value).
    fn blocks(&mut self, item: &Schema, is_map: bool, ns: &Namespace) -> Result<(), CodecError> {
        let what = if is_map {
            "a map block"
        } else {
            "an array block"
        };
        let item_is_empty = !is_map && encodes_to_nothing(item, self.names, 0);
        loop {
            let at = self.pos;
            let count = self.long(what)?;
            if count == 0 {
                return Ok(());
            }
            let byte_size = if count < 0 {
                let size = self.long(what)?;
                let size = usize::try_from(size).map_err(|_| {
                    CodecError::InvalidAvro(format!("{what} at byte {at} has byte size {size}"))
                })?;
                if size > self.remaining() {
                    return Err(CodecError::Truncated(format!(
                        "{what} at byte {at} claims {size} bytes but only {} remain",
                        self.remaining()
                    )));
                }
                Some(size)
            } else {
                None
            };
            let count = usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX);
            // Each item takes at least one byte, unless it encodes to nothing.
            if (!item_is_empty && count > self.remaining()) || count > self.items_left {
                return Err(CodecError::Truncated(format!(
                    "{what} at byte {at} claims {count} items but only {} bytes remain",
                    self.remaining()
                )));
            }
            self.items_left -= count;
            let block_start = self.pos;
            for _ in 0..count {
                if is_map {
                    let len = self.length("a map key")?;
                    let key_at = self.pos;
                    let key = self.take(len, "a map key")?;
                    std::str::from_utf8(key).map_err(|e| {
                        CodecError::InvalidAvro(format!(
                            "the map key at byte {key_at} is not UTF-8: {e}"
                        ))
                    })?;
                }
                self.value(item, ns)?;
            }
            if let Some(size) = byte_size {
                if self.pos - block_start != size {
                    return Err(CodecError::InvalidAvro(format!(
                        "{what} at byte {at} says it is {size} bytes long but its items take {}",
                        self.pos - block_start
                    )));
                }
            }
        }
    }
}

/// Whether a value of `schema` can take zero bytes.
fn encodes_to_nothing(schema: &Schema, names: &NamedTypes, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match schema {
        Schema::Null => true,
        Schema::Fixed(f) => f.size == 0,
        Schema::Record(r) => r
            .fields
            .iter()
            .all(|f| encodes_to_nothing(&f.schema, names, depth + 1)),
        Schema::Ref { name } => names
            .get(name)
            .is_some_and(|s| encodes_to_nothing(s, names, depth + 1)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schema: &str, datum: &[u8]) -> Result<(), CodecError> {
        let schema = Schema::parse_str(schema).unwrap();
        check_datum(&schema, &named_types(&schema), datum)
    }

    #[test]
    fn a_huge_map_claim_is_refused_before_anything_is_allocated() {
        // 500,000,000 entries, zigzag-encoded, then nothing.
        let mut datum = Vec::new();
        let mut v: u64 = 1_000_000_000;
        while v >= 0x80 {
            datum.push((v as u8) | 0x80);
            v >>= 7;
        }
        datum.push(v as u8);
        let err = check(r#"{"type":"map","values":"string"}"#, &datum).unwrap_err();
        assert_eq!(err.kind(), "truncated", "{err}");
        assert!(err.to_string().contains("500000000 items"), "{err}");
    }

    #[test]
    fn an_array_of_nulls_is_bounded_by_the_datums_size() {
        // 2 nulls in a 2-byte datum (count 2, end) is fine; 300 are not.
        assert!(check(r#"{"type":"array","items":"null"}"#, &[4, 0]).is_ok());
        let err = check(r#"{"type":"array","items":"null"}"#, &[0xd8, 0x04, 0]).unwrap_err();
        assert_eq!(err.kind(), "truncated", "{err}");
    }

    #[test]
    fn the_end_of_input_at_a_union_is_truncation_not_null() {
        let schema = r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":"string"},{"name":"b","type":["null","string"]}]}"#;
        assert!(check(schema, &[2, b'x', 0]).is_ok());
        assert_eq!(check(schema, &[2, b'x']).unwrap_err().kind(), "truncated");
        assert_eq!(
            check(schema, &[2, b'x', 0, 0]).unwrap_err().kind(),
            "invalid_avro"
        );
    }

    #[test]
    fn values_are_checked_where_the_encoding_constrains_them() {
        let record = |t: &str| {
            format!(r#"{{"type":"record","name":"R","fields":[{{"name":"f","type":{t}}}]}}"#)
        };
        let invalid = |t: &str, d: &[u8]| check(&record(t), d).unwrap_err().kind();
        assert_eq!(invalid(r#""boolean""#, &[2]), "invalid_avro");
        assert_eq!(invalid(r#""string""#, &[4, 0xff, 0xfe]), "invalid_avro");
        assert_eq!(
            invalid(r#""string""#, &[1]),
            "invalid_avro",
            "negative length"
        );
        assert_eq!(
            invalid(r#""int""#, &[0xff, 0xff, 0xff, 0xff, 0x7f]),
            "invalid_avro"
        );
        assert_eq!(invalid(r#""long""#, &[0xff; 11]), "invalid_avro");
        assert_eq!(
            invalid(r#"{"type":"enum","name":"E","symbols":["a"]}"#, &[2]),
            "invalid_avro"
        );
        assert_eq!(invalid(r#"["null","int"]"#, &[4]), "invalid_avro");
        assert_eq!(invalid(r#""double""#, &[0; 7]), "truncated");
    }

    #[test]
    fn nesting_is_bounded() {
        let schema = r#"{"type":"record","name":"Node","fields":[
            {"name":"next","type":["null","Node"]}]}"#;
        let mut datum = vec![2u8; MAX_DEPTH];
        datum.push(0);
        let err = check(schema, &datum).unwrap_err();
        assert!(err.to_string().contains("nest deeper"), "{err}");
        let mut shallow = vec![2u8; 10];
        shallow.push(0);
        assert!(check(schema, &shallow).is_ok());
    }
}
