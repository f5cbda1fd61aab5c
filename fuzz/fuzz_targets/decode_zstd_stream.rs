#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::decode::fuzz::zstd_stream_entry(data));
