#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::decode::fuzz::none_entry(data));
