#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate::sink::fuzz::batch_encoder_entry(data));
