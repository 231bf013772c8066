//! Coverage-guided fuzzing of the decode path (`make fuzz`): the bytes a
//! consumer hands the codec, for every input record and the outbound
//! messages `leadflow notify` reads. The first two bytes steer: which
//! record, and which framing the rest gets (single-object with the current
//! or an older schema's fingerprint, or as it is: JSON, unknown formats),
//! so that the fuzzer spends its time inside the datum rather than
//! guessing an 8-byte fingerprint. Any panic or abort is a finding; every
//! error must be an ordinary `CodecError`.
#![no_main]

use std::sync::OnceLock;

use leadflow::codec::{fingerprint, Codec, HISTORICAL_SCHEMAS};
use leadflow::events::{InputStream, OutboundMessage, Record};
use libfuzzer_sys::fuzz_target;

fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| Codec::new(None))
}

fn framed(fp: [u8; 8], body: &[u8]) -> Vec<u8> {
    [&[0xC3, 0x01][..], &fp, body].concat()
}

fuzz_target!(|data: &[u8]| {
    let [which, framing, body @ ..] = data else {
        return;
    };
    let codec = codec();
    let record = match which % 5 {
        4 => OutboundMessage::NAME,
        i => InputStream::ALL[i as usize].record_name(),
    };
    let bytes = match framing % 3 {
        0 => framed(codec.schemas().current_fingerprint(record), body),
        1 => match HISTORICAL_SCHEMAS.iter().find(|(n, _)| *n == record) {
            Some((_, text)) => framed(fingerprint(text).expect("schema"), body),
            None => body.to_vec(),
        },
        _ => body.to_vec(),
    };
    futures::executor::block_on(async {
        if which % 5 == 4 {
            let _ = codec.decode::<OutboundMessage>(&bytes).await;
        } else {
            let stream = InputStream::ALL[(which % 5) as usize];
            let _ = codec.decode_input(stream, &bytes).await;
        }
    });
});
