//! Randomness for ids, from the runtime (Durable Objects have no other entropy source).

use worker::js_sys::{self, Function, Reflect};
use worker::wasm_bindgen::JsCast;

/// A v4 UUID from `crypto.randomUUID()`.
pub fn uuid() -> String {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).expect("the runtime has crypto");
    let random_uuid: Function = Reflect::get(&crypto, &"randomUUID".into())
        .expect("crypto.randomUUID exists")
        .unchecked_into();
    random_uuid
        .call0(&crypto)
        .ok()
        .and_then(|v| v.as_string())
        .expect("randomUUID returns a string")
}

/// `N` random bytes. Used for presence refs and socket ids, which need uniqueness, not secrecy.
pub fn bytes<const N: usize>() -> [u8; N] {
    std::array::from_fn(|_| (js_sys::Math::random() * 256.0) as u8)
}
