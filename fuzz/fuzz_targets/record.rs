//! Host records: an etcd key and value through the registry cache
//! (envelope, signature, key/lease/age binding, body, validation).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = linkmesh_fuzz::record(data);
});
