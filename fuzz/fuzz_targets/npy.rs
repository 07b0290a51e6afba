//! The .npy reader on arbitrary bytes: a typed error or an array, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    laplace_update::io::fuzz::npy(data);
});
