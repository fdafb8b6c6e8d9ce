//! Segment definitions (through the registry cache) and floating-IP
//! records (as the VIP manager reads them), with their keys.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = linkmesh_fuzz::segment_vip(data);
});
