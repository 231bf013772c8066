//! GDPR settings (`[gdpr]`); what erasure and retention do is in docs/GDPR.md.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::gdpr::shredding::MasterKeys;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GdprConfig {
    /// After a lead's erasure every event for it is dropped, so that a
    /// replay of the old log cannot bring it back. With this on, a LeadEvent
    /// later than the erasure that carries consent given after it starts
    /// the lead anew (the person came back and agreed again).
    pub recreate_after_erasure: bool,
    /// Leads without an event for this many days on the processor's clock
    /// are erased; 0 (the default) keeps every lead.
    pub inactive_retention_days: u32,
    /// How often each processor looks for such leads in its partitions.
    pub retention_check_interval_s: u64,
    pub encryption: EncryptionConfig,
}

/// Crypto-shredding of outbound messages (docs/GDPR.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Encrypt `to` and the personal `data` of every OutboundMessage with
    /// the lead's own key; `run` and `notify` refuse to start without a
    /// master key.
    pub enabled: bool,
    /// 32 bytes in base64 (`openssl rand -base64 32`). A secret: give it by
    /// LEADFLOW__GDPR__ENCRYPTION__MASTER_KEY rather than in the file.
    pub master_key: String,
    /// Master keys rotated out: they still unwrap the keys they wrapped.
    pub retired_master_keys: Vec<String>,
}

impl EncryptionConfig {
    /// The parsed keys when encryption is on (the configuration was checked
    /// at start-up, so they parse).
    pub fn master_keys(&self) -> Option<MasterKeys> {
        self.enabled
            .then(|| MasterKeys::from_base64(&self.master_key, &self.retired_master_keys).ok())
            .flatten()
    }
}

impl Default for GdprConfig {
    fn default() -> Self {
        GdprConfig {
            recreate_after_erasure: false,
            inactive_retention_days: 0,
            retention_check_interval_s: 3600,
            encryption: EncryptionConfig::default(),
        }
    }
}

impl GdprConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.inactive_retention_days > 0 && self.retention_check_interval_s == 0 {
            return Err(ConfigError::Invalid {
                key: "gdpr.retention_check_interval_s".into(),
                reason: "must be at least 1 second when gdpr.inactive_retention_days is set".into(),
            });
        }
        let e = &self.encryption;
        if e.enabled {
            if e.master_key.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: "gdpr.encryption.master_key".into(),
                    reason: "encryption is on but no master key is given: set it (32 bytes, \
                             base64) in LEADFLOW__GDPR__ENCRYPTION__MASTER_KEY"
                        .into(),
                });
            }
            if let Err((i, reason)) = MasterKeys::from_base64(&e.master_key, &e.retired_master_keys)
            {
                let key = match i {
                    0 => "gdpr.encryption.master_key".to_string(),
                    i => format!("gdpr.encryption.retired_master_keys[{}]", i - 1),
                };
                return Err(ConfigError::Invalid {
                    key,
                    reason: reason.to_string(),
                });
            }
        }
        Ok(())
    }
}
