//! `POST /ips` request bodies: parsing and validation as the API does it,
//! then the record it would write, read back as every agent reads it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = linkmesh_fuzz::api_body(data);
});
