#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::shard::fuzz_entry(data));
