//! Deterministic ids (UUID v5) for what the core and the delivery worker
//! emit: a re-emission after a crash, a rebalance or in a replay carries the
//! same id, which is what lets downstream consumers deduplicate.

/// The id of something emitted for a lead: `kind` says what, `cause` which.
pub fn output_id(lead_ext_id: &str, kind: &str, cause: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c65_6164_666c_6f77_0000_0000_0000_0001);
    uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{lead_ext_id}\u{1f}{kind}\u{1f}{cause}").as_bytes(),
    )
    .to_string()
}

/// SPEC §2: the same lead, sequence, step and cycle always give the same id.
pub fn message_id(lead_ext_id: &str, sequence: &str, step: &str, cycle: u32) -> String {
    output_id(
        lead_ext_id,
        "message",
        &format!("{sequence}\u{1f}{step}\u{1f}{cycle}"),
    )
}

/// A recipient's id for the per-recipient rate cap: the address (trimmed,
/// lower-cased) and channel, never the address itself.
pub fn recipient_hash(channel: &str, to: &str) -> String {
    output_id(&to.trim().to_lowercase(), "recipient", channel)
}
