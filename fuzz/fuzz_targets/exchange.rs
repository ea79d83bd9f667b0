//! One exchange: an answer read on the request path, then by capture.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flywheel::fuzzing::exchange(data));
