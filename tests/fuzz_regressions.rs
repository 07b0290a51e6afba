//! Every input kept in `tests/fuzz-corpus/<target>/` (crashes found by `scripts/fuzz.sh`, and
//! hand-made edge cases) goes through its reader again: a typed result, never a panic.

use std::path::Path;

#[test]
fn fuzz_corpus_inputs_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let mut count = 0;
    for (target, run) in [
        ("npy", laplace_update::io::fuzz::npy as fn(&[u8])),
        ("safetensors", laplace_update::io::fuzz::safetensors),
        ("posterior", laplace_update::io::fuzz::posterior),
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            run(&bytes);
            count += 1;
        }
    }
    assert!(count > 0, "the corpus is empty");
}
