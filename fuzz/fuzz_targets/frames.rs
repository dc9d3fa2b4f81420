//! A client's WebSocket frame, as the hub decodes it. Input: one byte (bit 0: vsn 2.0.0,
//! bit 1: a binary frame), then the frame. A frame that decodes is encoded again the way a client
//! sends it and must decode to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_shared::frame::{decode_binary, decode_text, encode_from_client, Vsn, WireFrame};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame)) = data.split_first() else { return };
    let vsn = if mode & 1 == 1 { Vsn::V2 } else { Vsn::V1 };
    let decoded = match mode & 2 == 2 {
        true => decode_binary(vsn, frame),
        false => match std::str::from_utf8(frame) {
            Ok(text) => decode_text(vsn, text),
            Err(_) => return,
        },
    };
    let Ok(message) = decoded else { return };
    let Ok(again) = encode_from_client(vsn, &message) else { return };
    let round = match &again {
        WireFrame::Text(text) => decode_text(vsn, text),
        WireFrame::Binary(bytes) => decode_binary(vsn, bytes),
    };
    assert_eq!(round.as_ref(), Ok(&message), "re-encoded as {again:?}");
});
