#![no_main]
// The property lives in meshgate-fuzz, so the corpus replay test checks the same thing on stable.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshgate_fuzz::config(data));
