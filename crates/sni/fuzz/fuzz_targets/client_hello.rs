#![no_main]
// Input format: see `meshgate_sni::split_fuzz_input` (a list of reads, as the engine feeds the reader).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = meshgate_sni::fuzz_reads(&meshgate_sni::split_fuzz_input(data), Default::default());
});
