#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::admin::fuzz::request_entry(data));
