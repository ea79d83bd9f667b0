//! A client's request body and the optional headers read with it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flywheel::fuzzing::client_request(data));
