//! Crypto-shredding: the personal fields of an OutboundMessage (`to`, and
//! the values of `data` but the ones named in [`CLEAR_DATA_KEYS`]) are
//! encrypted with a data key of the lead's own (AES-256-GCM) before the
//! message is published, and the key is stored wrapped by the master key.
//! An erasure deletes the lead's key, so every copy of its messages still on
//! a topic becomes unreadable. docs/GDPR.md, "Crypto-shredding".
//!
//! An encrypted field is `enc:v1:` and the base64 of a 12-byte nonce and
//! the ciphertext with its tag. A wrapped key is `v1:<master key id>:` and
//! the same encoding of the data key under the master key; the id (the
//! first 16 hex digits of the master key's SHA-256) says which master key
//! to unwrap it with, so that a rotated-out key still opens what it wrapped.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::events::OutboundMessage;

const FIELD_PREFIX: &str = "enc:v1:";
const WRAP_VERSION: &str = "v1";

/// `data` keys whose values stay readable: ids and names of leadflow's own
/// things, not the lead's.
pub const CLEAR_DATA_KEYS: &[&str] = &["lead_ext_id", "owner", "segment", "sequence", "variant"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShreddingError {
    #[error("a master key is 32 bytes in base64; this one {0}")]
    BadMasterKey(String),
    #[error("wrapped with master key {0}, which is neither gdpr.encryption.master_key nor one of gdpr.encryption.retired_master_keys")]
    UnknownMasterKey(String),
    #[error("the lead's data key is gone: the lead was erased")]
    KeyErased,
    #[error("not a wrapped key or an encrypted field this version reads")]
    Malformed,
    #[error("does not decrypt (tampered, or another key)")]
    Undecryptable,
}

/// A 256-bit AES key: a lead's data key, or a master key.
#[derive(Clone)]
pub struct DataKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn random() -> DataKey {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        DataKey { bytes }
    }

    fn seal(&self, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new_from_slice(&self.bytes).expect("a 32-byte key");
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("AES-GCM encrypts any length a message has");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        BASE64.encode(out)
    }

    fn open(&self, sealed: &str) -> Result<Vec<u8>, ShreddingError> {
        let bytes = BASE64
            .decode(sealed)
            .map_err(|_| ShreddingError::Malformed)?;
        if bytes.len() < 12 + 16 {
            return Err(ShreddingError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let cipher = Aes256Gcm::new_from_slice(&self.bytes).expect("a 32-byte key");
        cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| ShreddingError::Undecryptable)
    }

    fn encrypt_field(&self, value: &str) -> String {
        format!("{FIELD_PREFIX}{}", self.seal(value.as_bytes()))
    }

    fn decrypt_field(&self, value: &str) -> Result<String, ShreddingError> {
        match value.strip_prefix(FIELD_PREFIX) {
            None => Ok(value.to_string()),
            Some(sealed) => {
                String::from_utf8(self.open(sealed)?).map_err(|_| ShreddingError::Malformed)
            }
        }
    }
}

/// The master key that wraps the data keys, and the retired ones that
/// still unwrap what they wrapped.
#[derive(Debug, Clone)]
pub struct MasterKeys {
    current: (String, DataKey),
    retired: Vec<(String, DataKey)>,
}

impl MasterKeys {
    /// From base64 keys, as configured; the error says which one is wrong
    /// (0 the current one, i the i-th retired one).
    pub fn from_base64(
        current: &str,
        retired: &[String],
    ) -> Result<MasterKeys, (usize, ShreddingError)> {
        let parse = |text: &str| -> Result<(String, DataKey), ShreddingError> {
            let bytes = BASE64
                .decode(text.trim())
                .map_err(|e| ShreddingError::BadMasterKey(format!("is not base64 ({e})")))?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                ShreddingError::BadMasterKey(format!("has {} bytes", b.len()))
            })?;
            let id = Sha256::digest(bytes)[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Ok((id, DataKey { bytes }))
        };
        let current = parse(current).map_err(|e| (0, e))?;
        let retired = retired
            .iter()
            .enumerate()
            .map(|(i, k)| parse(k).map_err(|e| (i + 1, e)))
            .collect::<Result<_, _>>()?;
        Ok(MasterKeys { current, retired })
    }

    /// A data key wrapped by the current master key, for the store.
    pub fn wrap(&self, key: &DataKey) -> String {
        let (id, master) = &self.current;
        format!("{WRAP_VERSION}:{id}:{}", master.seal(&key.bytes))
    }

    pub fn unwrap(&self, wrapped: &str) -> Result<DataKey, ShreddingError> {
        let mut parts = wrapped.splitn(3, ':');
        let (Some(WRAP_VERSION), Some(id), Some(sealed)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(ShreddingError::Malformed);
        };
        let master = std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|(k, _)| k == id)
            .map(|(_, key)| key)
            .ok_or_else(|| ShreddingError::UnknownMasterKey(id.to_string()))?;
        let bytes: [u8; 32] = master
            .open(sealed)?
            .try_into()
            .map_err(|_| ShreddingError::Malformed)?;
        Ok(DataKey { bytes })
    }

    /// The id wrapped keys name the current master key by.
    pub fn current_id(&self) -> &str {
        &self.current.0
    }
}

/// Whether the message's personal fields are encrypted.
pub fn is_encrypted(message: &OutboundMessage) -> bool {
    message.to.starts_with(FIELD_PREFIX)
}

/// The message with `to` and the personal `data` values encrypted.
pub fn encrypt_message(message: &OutboundMessage, key: &DataKey) -> OutboundMessage {
    let mut out = message.clone();
    out.to = key.encrypt_field(&message.to);
    for (name, value) in out.data.iter_mut() {
        if !CLEAR_DATA_KEYS.contains(&name.as_str()) {
            *value = key.encrypt_field(value);
        }
    }
    out
}

/// The message as it was before [`encrypt_message`]; `key` is `None` when
/// the lead's key is gone (erased). A message published without encryption
/// passes through.
pub fn decrypt_message(
    message: &OutboundMessage,
    key: Option<&DataKey>,
) -> Result<OutboundMessage, ShreddingError> {
    if !is_encrypted(message) {
        return Ok(message.clone());
    }
    let key = key.ok_or(ShreddingError::KeyErased)?;
    let mut out = message.clone();
    out.to = key.decrypt_field(&message.to)?;
    for value in out.data.values_mut() {
        *value = key.decrypt_field(value)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Channel;

    fn master(byte: u8) -> String {
        BASE64.encode([byte; 32])
    }

    fn message() -> OutboundMessage {
        let mut m = crate::testing::outbound_message(
            "WEB-1",
            Channel::Email,
            "ana@example.com",
            "premium_welcome",
        );
        m.data.insert("first_name".into(), "Ana".into());
        m.data.insert("lead_ext_id".into(), "WEB-1".into());
        m
    }

    #[test]
    fn a_message_reads_back_only_with_its_leads_key() {
        let keys = MasterKeys::from_base64(&master(1), &[]).unwrap();
        let key = DataKey::random();
        let stored = keys.wrap(&key);
        assert!(stored.starts_with(&format!("v1:{}:", keys.current_id())));
        let plain = message();
        let sealed = encrypt_message(&plain, &keys.unwrap(&stored).unwrap());
        assert!(is_encrypted(&sealed));
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(
            !text.contains("ana@example.com") && !text.contains("\"Ana\""),
            "{text}"
        );
        // Ids stay readable.
        assert_eq!(sealed.data["lead_ext_id"], "WEB-1");
        assert_eq!(decrypt_message(&sealed, Some(&key)).unwrap(), plain);
        // Another lead's key, the key gone, a tampered field: refused.
        assert_eq!(
            decrypt_message(&sealed, Some(&DataKey::random())),
            Err(ShreddingError::Undecryptable)
        );
        assert_eq!(
            decrypt_message(&sealed, None),
            Err(ShreddingError::KeyErased)
        );
        // One bit of the ciphertext flipped: the tag no longer matches.
        let mut tampered = sealed.clone();
        let mut bytes = BASE64
            .decode(tampered.to.strip_prefix(FIELD_PREFIX).unwrap())
            .unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        tampered.to = format!("{FIELD_PREFIX}{}", BASE64.encode(bytes));
        assert_ne!(tampered.to, sealed.to);
        assert!(decrypt_message(&tampered, Some(&key)).is_err());
        // A message published with encryption off passes through.
        assert_eq!(decrypt_message(&plain, None).unwrap(), plain);
    }

    #[test]
    fn a_rotated_master_key_still_unwraps_what_it_wrapped() {
        let old = MasterKeys::from_base64(&master(1), &[]).unwrap();
        let key = DataKey::random();
        let wrapped = old.wrap(&key);
        let rotated = MasterKeys::from_base64(&master(2), &[master(1)]).unwrap();
        assert_eq!(rotated.unwrap(&wrapped).unwrap().bytes, key.bytes);
        assert!(rotated
            .wrap(&key)
            .starts_with(&format!("v1:{}:", rotated.current_id())));
        let forgotten = MasterKeys::from_base64(&master(2), &[]).unwrap();
        assert!(matches!(
            forgotten.unwrap(&wrapped),
            Err(ShreddingError::UnknownMasterKey(_))
        ));
        assert!(matches!(
            MasterKeys::from_base64("c2hvcnQ=", &[]),
            Err((0, ShreddingError::BadMasterKey(_)))
        ));
        assert!(matches!(
            MasterKeys::from_base64(&master(2), &["not base64!".into()]),
            Err((1, ShreddingError::BadMasterKey(_)))
        ));
    }
}
