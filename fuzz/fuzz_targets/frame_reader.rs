#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::transport::frame_reader_fuzz_entry(data));
