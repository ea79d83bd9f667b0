//! A config file, parsed and validated.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flywheel::fuzzing::config_file(data));
