//! Replays every committed fuzz input (`corpus/<target>/`, seeds, what the fuzzers kept, and any crash they
//! found) through the same property the fuzzer checks, on stable Rust: a regression fails `cargo test`.

use std::path::Path;

#[test]
fn every_corpus_input_holds_its_property() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, check) in meshgate_fuzz::TARGETS {
        let dir = root.join(target);
        let mut n = 0;
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // A failing input names itself before the property's own message.
            eprintln!("{target}: {}", path.display());
            check(&data);
            n += 1;
        }
        assert!(
            n >= 5,
            "{target}: only {n} corpus inputs in {}",
            dir.display()
        );
    }
}
