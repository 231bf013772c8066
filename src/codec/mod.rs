//! Wire formats of SPEC §2.
//!
//! - Confluent framing (`0x00` + 4-byte big-endian schema id + Avro datum)
//!   when a schema registry is configured; writer schemas are fetched by id
//!   and cached, our schemas are registered under `<topic>-value`.
//! - Avro single-object encoding (`0xC3 0x01` + 8-byte little-endian
//!   CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form + datum)
//!   when none is. Readers know the fingerprints of the current schemas and
//!   of every older version kept in `schemas/history/`, which is how a
//!   reader of today's schema reads a record an older producer wrote. Until
//!   this release the fingerprints were computed from apache-avro's
//!   non-standard canonical form ([`canonical`]); those are still read.
//! - JSON (a UTF-8 object) on input, for upstream convenience.
//!
//! Decoding first proves the datum well formed and bounded for the writer's
//! schema ([`bounded`]), then resolves the writer's schema against our
//! current (reader) schema, following Avro's schema-resolution rules.

pub mod bounded;
pub mod canonical;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::Deserialize;

use bounded::NamedTypes;

use crate::events::{
    DeliveryEvent, ForecastEvent, InputEvent, InputStream, InteractionEvent, LeadEvent, LeadScore,
    OutboundMessage, Record, StageChangeEvent,
};

const CONFLUENT_MAGIC: u8 = 0;
const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// `(file name, schema text)` of every current schema, compiled in from `schemas/`.
pub const CURRENT_SCHEMAS: &[(&str, &str)] = &[
    ("LeadEvent", include_str!("../../schemas/LeadEvent.avsc")),
    (
        "InteractionEvent",
        include_str!("../../schemas/InteractionEvent.avsc"),
    ),
    (
        "StageChangeEvent",
        include_str!("../../schemas/StageChangeEvent.avsc"),
    ),
    ("LeadScore", include_str!("../../schemas/LeadScore.avsc")),
    (
        "OutboundMessage",
        include_str!("../../schemas/OutboundMessage.avsc"),
    ),
    (
        "DeliveryEvent",
        include_str!("../../schemas/DeliveryEvent.avsc"),
    ),
    (
        "ForecastEvent",
        include_str!("../../schemas/ForecastEvent.avsc"),
    ),
];

/// Older versions still accepted from producers (single-object encoding).
pub const HISTORICAL_SCHEMAS: &[(&str, &str)] = &[
    (
        "LeadEvent",
        include_str!("../../schemas/history/LeadEvent.v1.avsc"),
    ),
    (
        "LeadEvent",
        include_str!("../../schemas/history/LeadEvent.v2.avsc"),
    ),
    (
        "ForecastEvent",
        include_str!("../../schemas/history/ForecastEvent.v1.avsc"),
    ),
];

/// Why a message could not be decoded. `kind()` is the stable reason that
/// goes into the dead-letter header and the metrics label.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty message")]
    Empty,
    #[error("not a known wire format (first byte 0x{0:02x}): not Confluent-framed Avro, single-object Avro or a JSON object")]
    UnknownFormat(u8),
    #[error("message is truncated: {0}")]
    Truncated(String),
    #[error("unknown schema fingerprint {0}: not a current or historical leadflow schema")]
    UnknownFingerprint(String),
    #[error("schema id {0} is not known to the schema registry")]
    UnknownSchemaId(u32),
    #[error("message is Confluent-framed (schema id {0}) but no schema registry is configured")]
    NoRegistry(u32),
    #[error("writer schema is {found}, expected {expected}")]
    SchemaMismatch { expected: String, found: String },
    #[error("Avro datum does not match its schema: {0}")]
    InvalidAvro(String),
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid event: {0}")]
    Validation(String),
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("schema registry refused the request: {0}")]
    RegistryRejected(String),
    #[error("cannot encode {record}: {reason}")]
    Encode {
        record: &'static str,
        reason: String,
    },
}

impl CodecError {
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::Empty => "empty",
            CodecError::UnknownFormat(_) => "unknown_format",
            CodecError::Truncated(_) => "truncated",
            CodecError::UnknownFingerprint(_) => "unknown_schema",
            CodecError::UnknownSchemaId(_) => "unknown_schema",
            CodecError::NoRegistry(_) => "unknown_schema",
            CodecError::SchemaMismatch { .. } => "schema_mismatch",
            CodecError::InvalidAvro(_) => "invalid_avro",
            CodecError::InvalidJson(_) => "invalid_json",
            CodecError::Validation(_) => "validation",
            CodecError::RegistryUnavailable(_) => "registry_unavailable",
            CodecError::RegistryRejected(_) => "registry_rejected",
            CodecError::Encode { .. } => "encode",
        }
    }

    /// Transient errors are retried; everything else is a property of the
    /// message itself and sends it to the dead-letter topic.
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable(_))
    }
}

struct KnownSchema {
    name: String,
    schema: Arc<Schema>,
    names: NamedTypes,
}

impl KnownSchema {
    fn new(schema: Schema) -> Self {
        KnownSchema {
            name: record_name(&schema),
            names: bounded::named_types(&schema),
            schema: Arc::new(schema),
        }
    }
}

/// The parsed schemas, looked up by record name (current) or fingerprint
/// (any version, standard or legacy fingerprint).
pub struct SchemaSet {
    current: HashMap<&'static str, (Arc<Schema>, [u8; 8], &'static str)>,
    by_fingerprint: HashMap<[u8; 8], Arc<KnownSchema>>,
}

impl SchemaSet {
    pub fn load() -> Self {
        let mut current = HashMap::new();
        let mut by_fingerprint = HashMap::new();
        let all = CURRENT_SCHEMAS
            .iter()
            .map(|s| (s, true))
            .chain(HISTORICAL_SCHEMAS.iter().map(|s| (s, false)));
        for (&(name, text), is_current) in all {
            // The schemas are compiled in and covered by tests; a parse
            // failure is a build defect, not a runtime condition.
            let known = Arc::new(KnownSchema::new(
                Schema::parse_str(text).unwrap_or_else(|e| panic!("schemas/{name}.avsc: {e}")),
            ));
            let standard = fingerprint(text).unwrap_or_else(|e| panic!("schemas/{name}.avsc: {e}"));
            if is_current {
                current.insert(name, (known.schema.clone(), standard, text));
            }
            by_fingerprint.insert(legacy_fingerprint(&known.schema), known.clone());
            by_fingerprint.insert(standard, known);
        }
        SchemaSet {
            current,
            by_fingerprint,
        }
    }

    pub fn current(&self, name: &str) -> &Arc<Schema> {
        &self
            .current
            .get(name)
            .unwrap_or_else(|| panic!("no schema named {name} in schemas/"))
            .0
    }

    pub fn current_fingerprint(&self, name: &str) -> [u8; 8] {
        self.current[name].1
    }

    /// The schema's text as in `schemas/`, with docs, defaults and logical types.
    pub fn current_text(&self, name: &str) -> &'static str {
        self.current[name].2
    }
}

/// The standard single-object fingerprint of a schema given as JSON text:
/// CRC-64-AVRO of its Parsing Canonical Form, little-endian.
pub fn fingerprint(schema_json: &str) -> Result<[u8; 8], canonical::CanonicalFormError> {
    canonical::fingerprint(schema_json)
}

/// The fingerprint leadflow wrote before it followed the specification
/// (apache-avro's own canonical form); still accepted on input.
pub fn legacy_fingerprint(schema: &Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    bytes
        .try_into()
        .expect("CRC-64-AVRO fingerprints are 8 bytes")
}

/// The record name of a schema, without namespace.
fn record_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.name.clone(),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}

/// A client for the Confluent Schema Registry REST API
/// (`GET /schemas/ids/{id}`, `POST /subjects/{subject}/versions`), with caches
/// in both directions: schemas are immutable once registered.
pub struct RegistryClient {
    base_url: String,
    http: reqwest::Client,
    by_id: RwLock<HashMap<u32, Arc<KnownSchema>>>,
    ids: RwLock<HashMap<(String, &'static str), u32>>,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

#[derive(Deserialize)]
struct RegisterResponse {
    id: u32,
}

impl RegistryClient {
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, CodecError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CodecError::RegistryUnavailable(e.to_string()))?;
        Ok(RegistryClient {
            base_url: base_url.trim_end_matches('/').to_string(),
            http,
            by_id: RwLock::default(),
            ids: RwLock::default(),
        })
    }

    async fn schema_by_id(&self, id: u32) -> Result<Arc<KnownSchema>, CodecError> {
        if let Some(s) = self.by_id.read().expect("registry cache").get(&id) {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let response = self
            .http
            .get(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(|e| CodecError::RegistryUnavailable(format!("GET {url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(CodecError::UnknownSchemaId(id));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(CodecError::RegistryUnavailable(format!(
                "GET {url}: {status}"
            )));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(CodecError::RegistryRejected(format!(
                "GET {url}: {status} {body}"
            )));
        }
        let body: SchemaResponse = response
            .json()
            .await
            .map_err(|e| CodecError::RegistryUnavailable(format!("GET {url}: bad body: {e}")))?;
        let schema = Schema::parse_str(&body.schema).map_err(|e| {
            CodecError::RegistryRejected(format!("schema id {id} does not parse: {e}"))
        })?;
        let known = Arc::new(KnownSchema::new(schema));
        self.by_id
            .write()
            .expect("registry cache")
            .insert(id, known.clone());
        Ok(known)
    }

    /// Registers the schema's full text (docs, defaults, logical types), so
    /// that consumers reading with it see timestamps as timestamps and the
    /// registry can check the compatibility of the next version.
    async fn register(
        &self,
        subject: &str,
        record: &'static str,
        schema_text: &str,
    ) -> Result<u32, CodecError> {
        let key = (subject.to_string(), record);
        if let Some(id) = self.ids.read().expect("registry cache").get(&key) {
            return Ok(*id);
        }
        let url = format!("{}/subjects/{subject}/versions", self.base_url);
        let response = self
            .http
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema_text }))
            .send()
            .await
            .map_err(|e| CodecError::RegistryUnavailable(format!("POST {url}: {e}")))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(CodecError::RegistryUnavailable(format!(
                "POST {url}: {status}"
            )));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(CodecError::RegistryRejected(format!(
                "POST {url}: {status} {body}"
            )));
        }
        let body: RegisterResponse = response
            .json()
            .await
            .map_err(|e| CodecError::RegistryUnavailable(format!("POST {url}: bad body: {e}")))?;
        self.ids
            .write()
            .expect("registry cache")
            .insert(key, body.id);
        Ok(body.id)
    }
}

/// Reads and writes every leadflow record in the formats above.
pub struct Codec {
    schemas: SchemaSet,
    registry: Option<RegistryClient>,
}

impl Codec {
    pub fn new(registry: Option<RegistryClient>) -> Self {
        Codec {
            schemas: SchemaSet::load(),
            registry,
        }
    }

    pub fn schemas(&self) -> &SchemaSet {
        &self.schemas
    }

    pub fn has_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// Encodes for `topic`: Confluent framing with a registry, single-object without.
    pub async fn encode<T: Record>(&self, topic: &str, value: &T) -> Result<Vec<u8>, CodecError> {
        let schema = self.schemas.current(T::NAME);
        let datum = avro_datum(schema, value)?;
        match &self.registry {
            Some(registry) => {
                let id = registry
                    .register(
                        &format!("{topic}-value"),
                        T::NAME,
                        self.schemas.current_text(T::NAME),
                    )
                    .await?;
                let mut out = Vec::with_capacity(5 + datum.len());
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&datum);
                Ok(out)
            }
            None => Ok(self.encode_single_object(value)?),
        }
    }

    /// Avro single-object encoding with the current schema; needs no registry.
    pub fn encode_single_object<T: Record>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let schema = self.schemas.current(T::NAME);
        let datum = avro_datum(schema, value)?;
        let mut out = Vec::with_capacity(10 + datum.len());
        out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
        out.extend_from_slice(&self.schemas.current_fingerprint(T::NAME));
        out.extend_from_slice(&datum);
        Ok(out)
    }

    pub fn encode_json<T: Record>(value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::Encode {
            record: T::NAME,
            reason: e.to_string(),
        })
    }

    /// Decodes any of the three formats into `T`, resolving against the current schema.
    pub async fn decode<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let first = *bytes.first().ok_or(CodecError::Empty)?;
        if first == CONFLUENT_MAGIC {
            if bytes.len() < 5 {
                return Err(CodecError::Truncated(format!(
                    "Confluent header needs 5 bytes, got {}",
                    bytes.len()
                )));
            }
            let id = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
            let registry = self.registry.as_ref().ok_or(CodecError::NoRegistry(id))?;
            let writer = registry.schema_by_id(id).await?;
            return self.read_datum(&writer, &bytes[5..]);
        }
        if bytes.starts_with(&SINGLE_OBJECT_MAGIC) {
            if bytes.len() < 10 {
                return Err(CodecError::Truncated(format!(
                    "single-object header needs 10 bytes, got {}",
                    bytes.len()
                )));
            }
            let fp: [u8; 8] = bytes[2..10].try_into().expect("8 bytes");
            let writer = self
                .schemas
                .by_fingerprint
                .get(&fp)
                .ok_or_else(|| CodecError::UnknownFingerprint(hex(&fp)))?;
            return self.read_datum(writer, &bytes[10..]);
        }
        if let Some(&b) = bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            if b == b'{' {
                return serde_json::from_slice(bytes)
                    .map_err(|e| CodecError::InvalidJson(e.to_string()));
            }
        }
        Err(CodecError::UnknownFormat(first))
    }

    fn read_datum<T: Record>(&self, writer: &KnownSchema, datum: &[u8]) -> Result<T, CodecError> {
        if writer.name != T::NAME {
            return Err(CodecError::SchemaMismatch {
                expected: T::NAME.to_string(),
                found: writer.name.clone(),
            });
        }
        bounded::check_datum(&writer.schema, &writer.names, datum)?;
        let reader = self.schemas.current(T::NAME);
        // The bounded pass leaves apache-avro nothing to trip on; should it
        // panic all the same, the message is dead-lettered, not the process.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut cursor = datum;
            let value = apache_avro::from_avro_datum(&writer.schema, &mut cursor, Some(reader))
                .map_err(|e| CodecError::InvalidAvro(e.to_string()))?;
            apache_avro::from_value::<T>(&value).map_err(|e| CodecError::InvalidAvro(e.to_string()))
        }));
        decoded.unwrap_or_else(|_| {
            Err(CodecError::InvalidAvro(
                "the Avro decoder failed on this datum (internal panic)".into(),
            ))
        })
    }

    /// Decodes and validates a message from one of the input topics.
    pub async fn decode_input(
        &self,
        stream: InputStream,
        bytes: &[u8],
    ) -> Result<InputEvent, CodecError> {
        let event = match stream {
            InputStream::Leads => InputEvent::Lead(self.decode::<LeadEvent>(bytes).await?),
            InputStream::Interactions => {
                InputEvent::Interaction(self.decode::<InteractionEvent>(bytes).await?)
            }
            InputStream::StageChanges => {
                InputEvent::StageChange(self.decode::<StageChangeEvent>(bytes).await?)
            }
            InputStream::Deliveries => {
                InputEvent::Delivery(self.decode::<DeliveryEvent>(bytes).await?)
            }
        };
        event.validate().map_err(CodecError::Validation)?;
        Ok(event)
    }

    pub fn encode_input_json(event: &InputEvent) -> Result<Vec<u8>, CodecError> {
        match event {
            InputEvent::Lead(e) => Self::encode_json(e),
            InputEvent::Interaction(e) => Self::encode_json(e),
            InputEvent::StageChange(e) => Self::encode_json(e),
            InputEvent::Delivery(e) => Self::encode_json(e),
        }
    }

    /// Encodes an input event for its topic (used by `simulate` and tests).
    pub async fn encode_input(
        &self,
        topic: &str,
        event: &InputEvent,
    ) -> Result<Vec<u8>, CodecError> {
        match event {
            InputEvent::Lead(e) => self.encode(topic, e).await,
            InputEvent::Interaction(e) => self.encode(topic, e).await,
            InputEvent::StageChange(e) => self.encode(topic, e).await,
            InputEvent::Delivery(e) => self.encode(topic, e).await,
        }
    }
}

fn avro_datum<T: Record>(schema: &Schema, value: &T) -> Result<Vec<u8>, CodecError> {
    let encode_error = |e: apache_avro::Error| CodecError::Encode {
        record: T::NAME,
        reason: e.to_string(),
    };
    let value = apache_avro::to_value(value).map_err(encode_error)?;
    let value = value.resolve(schema).map_err(encode_error)?;
    apache_avro::to_avro_datum(schema, value).map_err(encode_error)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compile-time list of every record type, for tests that walk them all.
pub fn record_names() -> [&'static str; 7] {
    [
        LeadEvent::NAME,
        InteractionEvent::NAME,
        StageChangeEvent::NAME,
        LeadScore::NAME,
        OutboundMessage::NAME,
        DeliveryEvent::NAME,
        ForecastEvent::NAME,
    ]
}
