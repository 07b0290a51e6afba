//! The safetensors array reader on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    laplace_update::io::fuzz::safetensors(data);
});
