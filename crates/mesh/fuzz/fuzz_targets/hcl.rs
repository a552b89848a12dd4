#![no_main]
// Any bytes: the HCL reader and the decoder answer or refuse, never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = meshgate_mesh::load_document(text, std::path::Path::new("fuzz.hcl"));
    }
});
